#!/usr/bin/env python3
"""dom0 -> VM latency: `qrexec-client -d VM USER:true`, sequential calls (issue 12, goal 1).

Goal: per call <= floor = (`python3 -c pass` with the interpreter the installed scripts use)
+ 5 x (fork+exec of `true`), with the agent unprivileged (`nobody:true`: `/bin/sh -c`) and
as root (`root:true`: root's login shell, which any agent, C's too, runs: its cost joins
that agent's floor). Figures are the best of ROUNDS rounds, measured alternately so that
load on a shared machine hits all alike.

The root agent's floor is measured three ways. Apart: the login shell timed back to back
with itself, added to the floor. In order: in each of PAIRS rounds, the floor's parts one
after the other as a call runs them (`python3 -c pass`, five `true`, the login shell), once
as they are and once with the interpreter's exit put off until the shell is done, each
paired with one call (the three take turns going first). A ~100 ms login shell drifts
between rounds by more than a call adds to it; the median of the paired differences and its
quartiles show what the call adds.
The root goal is judged against the last of these floors: a caller's interpreter lives until
its call ends, and while one that has just started is alive the login shell takes up to
~1 ms longer (README.md, Benchmarks). The interpreter's start and exit stay the same work.
Usage: bench/call_latency.py [N [ROUNDS [PAIRS]]]   (defaults 100, 5, 100)
"""

from __future__ import annotations

import os
import pwd
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from common import fork_exec_true, load, paired, python_start, timed, use_installed
from world import BenchHost

#: `python3 -c pass` that stops itself where it would exit: SIGCONT lets it exit
_PASS_THEN_STOP = f"import os; os.kill(os.getpid(), {signal.SIGSTOP.value})"


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

        def after_the_interpreter() -> None:
            fork_exec_true(5)
            subprocess.run(login, env=login_env, cwd=root_pw.pw_dir, check=True)

        def floor_in_order() -> None:
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            after_the_interpreter()

        def floor_interpreter_alive() -> None:
            pid = os.posix_spawn(sys.executable, [sys.executable, "-c", _PASS_THEN_STOP],
                                 os.environ)
            os.waitpid(pid, os.WUNTRACED)
            after_the_interpreter()
            os.kill(pid, signal.SIGCONT)
            os.waitpid(pid, 0)

        runs = {"call": call, "floor": floor_in_order, "alive": floor_interpreter_alive}
        kinds = list(runs)
        in_order: dict[str, list[float]] = {k: [] for k in kinds}
        for i in range(pairs):
            first = i % len(kinds)
            for kind in kinds[first:] + kinds[:first]:
                in_order[kind].append(_seconds(runs[kind]))
    best = {k: min(v) * 1e3 for k, v in figures.items()}
    floor = best["py"] + 5 * best["true"]
    root_floor = floor + best["sh"]
    mid = {k: statistics.median(v) * 1e3 for k, v in in_order.items()}
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
          " of floor + login shell apart")
    print(f"  root, {pairs} rounds, the floor's parts in a call's order (py, 5 x true, login"
          " shell):")
    print(f"    call:                            median {mid['call']:7.2f} ms")
    print(f"    floor, python3 exits first:      median {mid['floor']:7.2f} ms"
          f"   {mid['call'] / mid['floor']:6.3f}x")
    print(f"      call - floor:    {paired(in_order['call'], in_order['floor'])}")
    print(f"    floor, python3 alive to the end: median {mid['alive']:7.2f} ms"
          f"   {mid['call'] / mid['alive']:6.3f}x (goal <= 1)")
    print(f"      call - floor:    {paired(in_order['call'], in_order['alive'])}")


if __name__ == "__main__":
    main()
