#!/usr/bin/env python3
"""VM -> VM latency: `qrexec-client-vm anotherVM test.True`, sequential (issue 12, goal 1).

Every call is decided by the real `qrexec-policy-daemon` (a rule allowing it). Goal: per
call <= floor + 10 x (fork+exec of `true`), floor being `python3 -c pass` with the
interpreter the installed scripts use + 5 x fork+exec; with both agents unprivileged and
with both as root. A root agent starts a service through a login shell, `/bin/sh -l`
(docs/reference/services.md), as any agent does, C's too: its cost alone, measured in the
same run, is added to the root agents' goal, as bench/call_latency.py adds root's login
shell. Best of ROUNDS alternating rounds.
Usage: bench/vm_calls.py [N [ROUNDS]]   (defaults 100, 5)
"""

from __future__ import annotations

import pwd
import sys

from common import fork_exec_true, load, python_start, timed, use_installed
from world import SERVICE, BenchHost


def main() -> None:
    use_installed()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with BenchHost() as host:
        for name, domid, root in (("work", 1, False), ("anotherVM", 2, False),
                                  ("rootwork", 3, True), ("rootother", 4, True)):
            host.vm(name, domid, root=root, policy=True)
        host.start_policy_daemon(f"{SERVICE} * @anyvm @anyvm allow\n")
        calls = {
            "nobody": (host.env(1), host.client_vm_argv("work", "anotherVM", SERVICE)),
            "root": (host.env(3), host.client_vm_argv("rootwork", "rootother", SERVICE)),
        }
        for env, argv in calls.values():
            timed(argv, 5, env=env)
        root_pw = pwd.getpwnam("root")
        login = ["/bin/sh", "-l", "-c", "true"]
        login_env = dict(host.env(3), HOME=root_pw.pw_dir, USER="root", LOGNAME="root")
        figures: dict[str, list[float]] = {k: [] for k in ("nobody", "root", "py", "true",
                                                           "sh")}
        for _ in range(rounds):
            figures["true"].append(fork_exec_true(n))
            figures["py"].append(python_start(max(n // 2, 10)))
            figures["sh"].append(timed(login, max(n // 2, 10), env=login_env,
                                      cwd=root_pw.pw_dir))
            for key, (env, argv) in calls.items():
                figures[key].append(timed(argv, n, env=env))
    best = {k: min(v) * 1e3 for k, v in figures.items()}
    floor = best["py"] + 5 * best["true"]
    goal = floor + 10 * best["true"]
    print(f"VM -> VM: {n} sequential `qrexec-client-vm VM2 {SERVICE}`, policy by "
          f"qrexec-policy-daemon, best of {rounds} rounds ({load()})")
    print(f"  fork+exec of true:        {best['true']:8.2f} ms")
    print(f"  python3 -c pass:          {best['py']:8.2f} ms")
    print(f"  goal = py + 15 x true:    {goal:8.2f} ms")
    print(f"  agents as nobody:         {best['nobody']:8.2f} ms   {best['nobody'] / goal:5.2f}x"
          " of the goal (<= 1)")
    print(f"  /bin/sh -l alone (root):  {best['sh']:8.2f} ms   (a root agent's service shell)")
    root_goal = goal + best["sh"]
    print(f"  agents as root  :         {best['root']:8.2f} ms   {best['root'] / root_goal:5.2f}x"
          " of the goal + that shell (<= 1)")


if __name__ == "__main__":
    main()
