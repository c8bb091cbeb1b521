#!/usr/bin/env python3
"""Memory (issue 12, goal 4): resident sets of the resident programs idle and after CALLS
calls, and the peak of one `qrexec-client` / `qrexec-client-vm` call.

Goals: idle daemon <= 16 MiB, agent <= 16 MiB, policy daemon <= 30 MiB, one CLI call's peak
<= 12 MiB, and no growth after the calls. The calls are VM -> VM (every resident program
takes part: both agents, both daemons, the policy daemon), BATCH at a time.
Also printed: the agent's call spawner and its idle workers
(docs/architecture.md#the-call-spawner), which share most of their pages with the agent,
and what one domain's qrexec processes take together, counted fairly (PSS: each shared page
divided among the processes sharing it).
Usage: bench/memory.py [CALLS [BATCH]]   (defaults 1000, 20)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from common import load, peak_rss_mib, rss_mib, smaps_mib, use_installed
from pyqrexec.system.spawner import SPARE_NAME, SPAWNER_NAME
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
        idle_domain = _domain_memory([agent, daemon, *_spawner_and_workers(agent)])
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
        helpers = _spawner_and_workers(agent)
        after_domain = _domain_memory([agent, daemon, *helpers])
        shares = [(_name(pid).decode(), smaps_mib(pid)) for pid in helpers]
    print(f"memory, MiB ({load()})")
    for key, goal in GOALS.items():
        print(f"  {key:14} idle {idle[key]:6.1f}  after {calls} calls {after[key]:6.1f}"
              f"   goal <= {goal:4.0f}, growth {after[key] - idle[key]:+.1f}")
    for name, m in shares:
        print(f"  {name:14} resident {m['Rss']:6.1f}, its own pages {m['Private']:5.1f}"
              " (after the calls)")
    print(f"  one domain's qrexec processes (agent, spawner, idle workers, daemon), PSS: idle"
          f" {idle_domain:.1f}, after the calls {after_domain:.1f};"
          f" x 50 domains: {after_domain * 50 / 1024:.2f} GiB")
    for key, peak in peaks.items():
        print(f"  {key:17} peak of one call {peak:6.1f}   goal <= 12")
    if failed:
        print(f"  {failed} of the {calls} calls failed")


def _spawner_and_workers(agent: int) -> list[int]:
    """The agent's call spawner and its idle workers (once a worker is idle)."""
    deadline = time.monotonic() + 10
    while True:
        found = []
        for spawner in _children(agent):
            if _name(spawner) == SPAWNER_NAME:
                found.append(spawner)
                found += [c for c in _children(spawner) if _name(c) == SPARE_NAME]
        if len(found) >= 2 or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _name(pid: int) -> bytes:
    return Path(f"/proc/{pid}/comm").read_bytes().rstrip(b"\n")


def _domain_memory(pids: list[int]) -> float:
    return sum(smaps_mib(pid)["Pss"] for pid in pids)


if __name__ == "__main__":
    main()
