#!/usr/bin/env python3
"""Memory (issue 12, goal 4): resident sets of the resident programs idle and after CALLS
calls, and the peak of one `qrexec-client` / `qrexec-client-vm` call.

Goals: idle daemon <= 16 MiB, agent <= 16 MiB, policy daemon <= 30 MiB, one CLI call's peak
<= 12 MiB, and no growth after the calls. The calls are VM -> VM (every resident program
takes part: both agents, both daemons, the policy daemon), BATCH at a time.
Usage: bench/memory.py [CALLS [BATCH]]   (defaults 1000, 20)
"""

from __future__ import annotations

import subprocess
import sys

from common import load, peak_rss_mib, rss_mib, use_installed
from world import SERVICE, BenchHost

GOALS = {"daemon": 16.0, "agent": 16.0, "policy daemon": 30.0}


def main() -> None:
    use_installed()
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    with BenchHost() as host:
        work = host.vm("work", 1, policy=True)
        host.vm("anotherVM", 2, policy=True)
        policy = host.start_policy_daemon(f"{SERVICE} * @anyvm @anyvm allow\n")
        agent, daemon = host.pids(work)
        pids = {"daemon": daemon, "agent": agent, "policy daemon": policy.pid}
        vm_env, vm_argv = host.env(1), host.client_vm_argv("work", "anotherVM", SERVICE)
        dom0_env, dom0_argv = host.env(0), host.client_argv("-d", "work", "nobody:true")
        for argv, env in ((vm_argv, vm_env), (dom0_argv, dom0_env)):  # first calls warm up
            subprocess.run(argv, env=env, check=True)
        idle = {k: rss_mib(p) for k, p in pids.items()}
        peaks = {
            "qrexec-client": max(peak_rss_mib(dom0_argv, env=dom0_env)[1] for _ in range(3)),
            "qrexec-client-vm": max(peak_rss_mib(vm_argv, env=vm_env)[1] for _ in range(3)),
        }
        failed = 0
        for start in range(0, calls, batch):
            procs = [subprocess.Popen(vm_argv, env=vm_env)
                     for _ in range(min(batch, calls - start))]
            failed += sum(1 for p in procs if p.wait() != 0)
        after = {k: rss_mib(p) for k, p in pids.items()}
    print(f"memory, MiB ({load()})")
    for key, goal in GOALS.items():
        print(f"  {key:14} idle {idle[key]:6.1f}  after {calls} calls {after[key]:6.1f}"
              f"   goal <= {goal:4.0f}, growth {after[key] - idle[key]:+.1f}")
    for key, peak in peaks.items():
        print(f"  {key:17} peak of one call {peak:6.1f}   goal <= 12")
    if failed:
        print(f"  {failed} of the {calls} calls failed")


if __name__ == "__main__":
    main()
