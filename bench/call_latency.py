#!/usr/bin/env python3
"""dom0 -> VM latency: `qrexec-client -d VM USER:true`, sequential calls (issue 12, goal 1).

Goal: per call <= floor = (`python3 -c pass` with the interpreter the installed scripts use)
+ 5 x (fork+exec of `true`), with the agent unprivileged (`nobody:true`: `/bin/sh -c`) and
as root (`root:true`: root's login shell, which any agent, C's too, runs: its cost joins
that agent's floor). Figures are the best of ROUNDS rounds, measured alternately so that
load on a shared machine hits all alike.

The root agent's floor is measured twice. Apart: the login shell timed back to back with
itself, added to the floor. In order: in each of PAIRS rounds, `python3 -c pass`, five
`true`, then the login shell, one after the other as a call runs them, paired with one call
(each goes first in every other round). A ~100 ms login shell drifts between rounds by more
than a call adds to it; the median of the paired differences and its quartiles show what
the call adds.
Usage: bench/call_latency.py [N [ROUNDS [PAIRS]]]   (defaults 100, 5, 100)
"""

from __future__ import annotations

import pwd
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from common import fork_exec_true, load, paired, python_start, timed, use_installed
from world import BenchHost


def _seconds(run: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def main() -> None:
    bindir = use_installed()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    pairs = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    with BenchHost() as host:
        host.vm("work", 1)
        host.vm("rootvm", 2, root=True)
        env = host.env(0)
        user = host.client_argv("-d", "work", "nobody:true")
        root = host.client_argv("-d", "rootvm", "root:true")
        root_pw = pwd.getpwnam("root")
        login = [root_pw.pw_shell or "/bin/sh", "-l", "-c", "true"]
        login_env = dict(env, HOME=root_pw.pw_dir, USER="root", LOGNAME="root",
                         SHELL=login[0])
        for argv in (user, root):
            timed(argv, 5, env=env)  # warm-up
        figures: dict[str, list[float]] = {k: [] for k in ("user", "root", "py", "true", "sh")}
        for _ in range(rounds):
            figures["true"].append(fork_exec_true(n))
            figures["py"].append(python_start(max(n // 2, 10)))
            figures["sh"].append(timed(login, max(n // 2, 10), env=login_env,
                                      cwd=root_pw.pw_dir))
            figures["user"].append(timed(user, n, env=env))
            figures["root"].append(timed(root, n, env=env))

        def call() -> None:
            subprocess.run(root, env=env, check=True)

        def floor_in_order() -> None:
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            fork_exec_true(5)
            subprocess.run(login, env=login_env, cwd=root_pw.pw_dir, check=True)

        runs = {"call": call, "floor": floor_in_order}
        in_order: dict[str, list[float]] = {"call": [], "floor": []}
        for i in range(pairs):
            for kind in ("call", "floor") if i % 2 else ("floor", "call"):
                in_order[kind].append(_seconds(runs[kind]))
    best = {k: min(v) * 1e3 for k, v in figures.items()}
    floor = best["py"] + 5 * best["true"]
    root_floor = floor + best["sh"]
    call_mid, floor_mid = (statistics.median(in_order[k]) * 1e3 for k in ("call", "floor"))
    print(f"dom0 -> VM: {n} sequential `qrexec-client -d VM USER:true`, best of {rounds} rounds"
          f" ({load()})")
    print(f"  installed scripts:        {bindir}")
    print(f"  fork+exec of true:        {best['true']:8.2f} ms")
    print(f"  python3 -c pass:          {best['py']:8.2f} ms")
    print(f"  floor = py + 5 x true:    {floor:8.2f} ms")
    print(f"  agent as nobody:          {best['user']:8.2f} ms   {best['user'] / floor:5.2f}x"
          " of the floor (goal <= 1)")
    print(f"  root's login shell alone: {best['sh']:8.2f} ms   (root's shell -l -c true)")
    print(f"  agent as root:            {best['root']:8.2f} ms   {best['root'] / root_floor:5.2f}x"
          " of floor + login shell apart (goal <= 1)")
    print(f"  root, {pairs} rounds in order: call median {call_mid:.2f} ms, floor in order"
          f" (py, 5 x true, login shell) median {floor_mid:.2f} ms:"
          f" {call_mid / floor_mid:6.3f}x (goal <= 1)")
    print(f"    call - floor in order:  {paired(in_order['call'], in_order['floor'])}")


if __name__ == "__main__":
    main()
