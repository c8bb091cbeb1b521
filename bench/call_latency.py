#!/usr/bin/env python3
"""Latency of sequential dom0 -> VM calls: `qrexec-client -d work root:true`, N times.

Baselines measured in the same run: fork+exec of /bin/true, and a bare Python start-up
(`python3 -c pass`), which bounds what any Python client can reach.
Usage: bench/call_latency.py [N]   (default 200)
"""

from __future__ import annotations

import sys

from common import compile_package, fork_exec_true, timed
from pyqrexec.host.plain import PlainHost

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _calls(host: PlainHost, vm: str, cmd: str, n: int) -> float:
    argv = host.client_argv("-d", vm, cmd)
    timed(argv, 5, env=host.env(0))  # warm-up
    return timed(argv, n, env=host.env(0))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    compile_package()
    base = fork_exec_true(n)
    py = timed([sys.executable, "-c", "pass"], min(n, 50))
    with PlainHost() as host:
        # non-root agent (the host model's mode): commands run with /bin/sh -c
        host.add("work", 1, user="nobody").start(agent_wrapper=NOBODY)
        # root agent: every command runs in root's login shell, so profile scripts count
        host.add("rootvm", 2).start()
        call = _calls(host, "work", "nobody:true", n)
        root_call = _calls(host, "rootvm", "root:true", n)
    print(f"calls: {n} sequential `qrexec-client -d VM USER:true`")
    print(f"  per call, non-root agent: {call * 1e3:8.2f} ms")
    print(f"  per call, root agent:     {root_call * 1e3:8.2f} ms   (login shell of root)")
    print(f"  fork+exec of true:        {base * 1e3:8.2f} ms   ratio {call / base:7.1f}x")
    print(f"  python3 -c pass:          {py * 1e3:8.2f} ms   ratio {call / py:7.1f}x")


if __name__ == "__main__":
    main()
