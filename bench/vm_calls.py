#!/usr/bin/env python3
"""VM -> VM calls: N sequential `qrexec-client-vm anotherVM test.True`, then 200 at once.

The policy allows every call (a policy-daemon stand-in answering on the policy socket, so the
figures show qrexec's own cost, not a policy program's start-up). Baseline in the same run:
fork+exec of /bin/true and a bare Python start-up.
Usage: bench/vm_calls.py [N] [CONCURRENT]   (defaults 200, 200)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from common import compile_package, fork_exec_true, serve_unix, timed
from pyqrexec.host.plain import PlainHost

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
ALLOW = (b"user=DEFAULT\nresult=allow\ntarget=anotherVM\ntarget_uuid=uuid:%s\n"
         b"autostart=False\nrequested_target=anotherVM")


def serve_policy(path: str, target_uuid: str) -> None:
    """Answer every policy request with an allow to anotherVM
    (docs/reference/policy.md#policy-daemon-socket)."""
    serve_unix(path, ALLOW % target_uuid.encode(), lambda data: data.endswith(b"\n\n"))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    concurrent = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    compile_package()
    base = fork_exec_true(n)
    py = timed([sys.executable, "-c", "pass"], 50)
    with PlainHost(keep=os.environ.get("BENCH_KEEP") is not None) as host:
        rpc = Path(host.root) / "rpc"
        rpc.mkdir()
        svc = rpc / "test.True"
        svc.write_text("#!/bin/sh\nexit 0\n")
        svc.chmod(0o755)
        os.chmod(host.root, 0o1777)
        policy_sock = str(host.root / "policy.sock")
        agent_env = {"QREXEC_SERVICE_PATH": str(rpc),
                     "QUBES_RPC_CONFIG_PATH": str(host.root / "no-rpc-config")}
        daemon_env = {"QREXEC_POLICY_SOCKET": policy_sock}
        work = host.add("work", 1, user="nobody")
        other = host.add("anotherVM", 2, user="nobody")
        serve_policy(policy_sock, other.uuid)
        for dom in (work, other):
            dom.start(agent_env=agent_env, agent_wrapper=NOBODY, daemon_env=daemon_env)
        env = host.env(work.domid)
        argv = host.client_vm_argv("work", "anotherVM", "test.True")
        timed(argv, 5, env=env)
        seq = timed(argv, n, env=env)
        t0 = time.perf_counter()
        procs = [subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
                 for _ in range(concurrent)]
        results = [(p.wait(), p.stderr.read() if p.stderr else b"") for p in procs]
        wall = time.perf_counter() - t0
        ok = sum(1 for status, _ in results if status == 0)
    print("VM -> VM calls, non-root agents, policy answered over the policy socket")
    print(f"  sequential ({n}):       {seq * 1e3:8.2f} ms per call")
    print(f"  fork+exec of true:      {base * 1e3:8.2f} ms   ratio {seq / base:7.1f}x")
    print(f"  python3 -c pass:        {py * 1e3:8.2f} ms   ratio {seq / py:7.1f}x")
    print(f"  {concurrent} in flight at once: {ok}/{concurrent} succeeded in {wall:.2f} s "
          f"({concurrent / wall:.0f} calls/s)")
    failures = [r for r in results if r[0] != 0]
    if failures:
        print(f"  first failure: status {failures[0][0]}: {failures[0][1][-300:]!r}")


if __name__ == "__main__":
    main()
