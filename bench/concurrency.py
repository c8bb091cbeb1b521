#!/usr/bin/env python3
"""Many calls at once from one domain (issue 12, goal 6), real `qrexec-client-vm` processes,
every call decided by the real `qrexec-policy-daemon`.

Goals: ALL (default 200) calls started at once all succeed; FLOOD (default 1,000) started at
once each succeed or are refused (126) promptly, none hangs, and meanwhile another domain's
sequential calls to the same VM succeed with their latency printed next to the same call's
latency on a quiet host.
Usage: bench/concurrency.py [ALL [FLOOD]]   (defaults 200, 1000)
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter

from common import load, timed, use_installed
from world import SERVICE, BenchHost

#: a call not ended after this long counts as hung
HUNG = 120.0


def burst(argv: list[str], env: dict[str, str], count: int,
          during: tuple[list[str], dict[str, str]] | None = None,
          ) -> tuple[Counter[int], float, float, list[float]]:
    """(exit statuses, seconds until all ended, slowest call, latencies of `during` calls
    made one after the other while the burst runs)."""
    others: list[float] = []
    over = threading.Event()

    def other_calls() -> None:
        # from the first call of the burst on: starting a thousand processes takes seconds
        assert during is not None
        while not over.is_set():
            t = time.perf_counter()
            subprocess.run(during[0], env=during[1], check=True, timeout=HUNG)
            others.append(time.perf_counter() - t)

    meanwhile = threading.Thread(target=other_calls) if during is not None else None
    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    t0 = time.perf_counter()
    procs = [start()]
    if meanwhile is not None:
        meanwhile.start()
    procs += [start() for _ in range(count - 1)]
    while any(p.poll() is None for p in procs) and time.perf_counter() < t0 + HUNG:
        time.sleep(0.01)
    over.set()
    if meanwhile is not None:
        meanwhile.join()
    statuses: Counter[int] = Counter()
    slowest = 0.0
    for p in procs:
        try:
            statuses[p.wait(max(t0 + HUNG - time.perf_counter(), 0.1))] += 1
        except subprocess.TimeoutExpired:
            p.kill()
            statuses[-1] += 1  # hung
        slowest = max(slowest, time.perf_counter() - t0)
    return statuses, time.perf_counter() - t0, slowest, others


def main() -> None:
    use_installed()
    all_count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    flood = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    with BenchHost() as host:
        for name, domid in (("work", 1), ("anotherVM", 2), ("personal", 3)):
            host.vm(name, domid, policy=True)
        host.start_policy_daemon(f"{SERVICE} * @anyvm @anyvm allow\n")
        work = (host.client_vm_argv("work", "anotherVM", SERVICE), host.env(1))
        other = (host.client_vm_argv("personal", "anotherVM", SERVICE), host.env(3))
        quiet = min(timed(other[0], 10, env=other[1]) for _ in range(3))
        ok, wall, _, _ = burst(*work, all_count)
        statuses, fwall, slowest, others = burst(*work, flood, during=other)
    print(f"calls at once from one domain, policy by qrexec-policy-daemon ({load()})")
    print(f"  {all_count} at once: {ok[0]}/{all_count} succeeded in {wall:.1f} s (goal: all); "
          f"statuses {dict(ok)}")
    rest = sum(statuses.values()) - statuses[0] - statuses[126] - statuses[-1]
    print(f"  {flood} at once: {statuses[0]} succeeded, {statuses[126]} refused (126), "
          f"{statuses[-1]} hung, {rest} other; all ended after {fwall:.1f} s, the last "
          f"after {slowest:.1f} s (goal: none hung, none other)")
    if others:
        print(f"  meanwhile personal -> anotherVM: {len(others)} calls, all succeeded, "
              f"median {sorted(others)[len(others) // 2] * 1e3:.0f} ms, worst "
              f"{max(others) * 1e3:.0f} ms (quiet host: {quiet * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
