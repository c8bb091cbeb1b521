#!/usr/bin/env python3
"""CPU time per dom0 -> VM call of each host-side process: qrexec-daemon, qrexec-agent, its
call spawner and the worker that handles the calls (issue 12, goals 1 and 3).

On a machine with few CPUs, what these processes spend on a call is mostly spent on the
caller's CPU or while the caller waits for them, so it adds to the call's latency even when
the design overlaps it with the caller's start (docs/architecture.md#a-calls-start). The
figures come from /proc/PID/schedstat (nanoseconds on the CPU), read before and after N
sequential `qrexec-client -d VM nobody:true`; the caller's own CPU and the service's (`sh -c
true`) are not in them. The baseline, measured in the same run, is the CPU time of one
fork+exec of `true` (its wait4 rusage).
Usage: bench/call_cpu.py [N [ROUNDS]]   (defaults 400, 3; the best round of each process)
"""

from __future__ import annotations

import os
import sys
import time

from common import load, timed, use_installed
from world import BenchHost


def _cpu_ns(agent: int, daemon: int) -> dict[int, tuple[str, int]]:
    """(role, nanoseconds on the CPU) of the domain's processes, by pid. Roles come from the
    process tree, not the names: a worker takes the agent's name while it handles a call."""
    stat: dict[int, tuple[str, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as st, open(f"/proc/{entry}/schedstat") as sched:
                fields = st.read().rpartition(")")[2].split()
                ns = int(sched.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        stat[int(entry)] = ("", int(fields[1]), ns)
    spawners = {pid for pid, (_, ppid, _) in stat.items() if ppid == agent}
    found = {}
    for pid, (_, ppid, ns) in stat.items():
        if pid == agent:
            found[pid] = ("qrexec-agent", ns)
        elif pid == daemon:
            found[pid] = ("qrexec-daemon", ns)
        elif pid in spawners:
            found[pid] = ("qrexec-spawner", ns)
        elif ppid in spawners:
            found[pid] = ("call worker", ns)
    return found


def _true_cpu_ms(n: int) -> float:
    """CPU milliseconds (user + system) of one fork+exec of `true`, the child's own."""
    total = 0.0
    for _ in range(n):
        pid = os.posix_spawn("/bin/true", ["true"], os.environ)
        _, _, usage = os.wait4(pid, 0)
        total += usage.ru_utime + usage.ru_stime
    return total / n * 1e3


def _round(argv: list[str], env: dict[str, str], n: int,
           pids: tuple[int, int]) -> tuple[float, dict[str, float]]:
    """(wall ms per call, CPU ms per call by role) of `n` calls; a role one of whose
    processes ended meanwhile (a worker retires after 500 calls) is left out of the round."""
    before = _cpu_ns(*pids)
    wall = timed(argv, n, env=env) * 1e3
    after = _cpu_ns(*pids)
    spent: dict[str, float] = {}
    for pid, (role, ns) in after.items():
        spent[role] = spent.get(role, 0.0) + (ns - before.get(pid, (role, 0))[1]) / n / 1e6
    for pid, (role, _) in before.items():
        if pid not in after:
            spent.pop(role, None)
    return wall, spent


def main() -> None:
    use_installed()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with BenchHost() as host:
        dom = host.vm("work", 1)
        pids = host.pids(dom)
        env = host.env(0)
        argv = host.client_argv("-d", "work", "nobody:true")
        timed(argv, 20, env=env)  # warm-up: the spawner forks its workers
        time.sleep(0.2)
        best: dict[str, float] = {}
        walls, trues = [], []
        for _ in range(rounds):
            trues.append(_true_cpu_ms(200))
            wall, spent = _round(argv, env, n, pids)
            walls.append(wall)
            for name, ms in spent.items():
                best[name] = min(best.get(name, ms), ms)
    floor = min(trues)
    print(f"dom0 -> VM: CPU per `qrexec-client -d VM nobody:true` of the host-side processes, "
          f"best of {rounds} rounds of {n} ({load()})")
    print(f"  fork+exec of true (CPU):   {floor:6.3f} ms")
    print(f"  call (wall, best round):   {min(walls):6.3f} ms")
    total = 0.0
    for name in ("qrexec-daemon", "qrexec-agent", "qrexec-spawner", "call worker"):
        ms = best.get(name, float("nan"))
        total += ms
        print(f"  {name + ':':26s} {ms:6.3f} ms   {ms / floor:5.2f}x fork+exec of true")
    print(f"  {'together:':26s} {total:6.3f} ms   {total / floor:5.2f}x fork+exec of true")


if __name__ == "__main__":
    main()
