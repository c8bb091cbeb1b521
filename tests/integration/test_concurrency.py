"""Many calls at once from one domain: 200 real `qrexec-client-vm`
processes all succeed; 1,000 callers each succeed or are refused (126) promptly, none hangs,
and another domain's calls go on meanwhile."""

from __future__ import annotations

import subprocess
import threading
import time

from .fixtures.processes import QrexecHost
from .fixtures.rawcalls import raw_vm_call
from .fixtures.world import World

#: no call may take longer than this, however many run at once (a hang fails the test)
PROMPT = 60.0


def _world(host: QrexecHost) -> World:
    w = World(host)
    for name, domid in (("work", 5), ("anotherVM", 7), ("personal", 9)):
        w.domain(name, domid)
    w.service("anotherVM", "test.True", "#!/bin/sh\nexit 0\n")
    return w


def test_two_hundred_calls_at_once_all_succeed(host: QrexecHost) -> None:
    w = _world(host)
    procs = [w.start_call("work", "anotherVM", "test.True", stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(200)]
    deadline = time.monotonic() + PROMPT
    results = []
    for p in procs:
        _, err = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        results.append((p.returncode, err))
    assert [r for r in results if r[0] != 0] == []


def test_thousand_calls_at_once_end_promptly_and_spare_other_domains(
    host: QrexecHost,
) -> None:
    """What qrexec-client-vm does, done by 1,000 threads released together: each call ends
    with the service's status 0 or a refusal (qrexec-client-vm's 126), none later than
    PROMPT; meanwhile `personal` calls the same domain with the real client."""
    w = _world(host)
    count = 1000
    start = threading.Barrier(count + 1)
    results: list[object] = [Ellipsis] * count

    def caller(i: int) -> None:
        start.wait()
        try:
            results[i] = raw_vm_call(host.domains["work"], b"anotherVM", b"test.True",
                                     wait_in_backlog=True)
        except OSError as err:
            results[i] = err

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    start.wait()
    began = time.monotonic()
    others = []
    while len(others) < 5 and any(t.is_alive() for t in threads):
        t0 = time.monotonic()
        r = w.call("personal", "anotherVM", "test.True", timeout=PROMPT)
        others.append((r.returncode, time.monotonic() - t0, r.stderr))
    for t in threads:
        t.join(max(began + PROMPT - time.monotonic(), 0.1))
    assert not any(t.is_alive() for t in threads), "calls still running after PROMPT"
    # 0: the service ran; None: refused, which qrexec-client-vm reports as 126
    assert [r for r in results if r not in (0, None)] == []
    assert results.count(0) > 0
    assert others and all(status == 0 for status, _, _ in others), others
    # the other domain's calls are not queued behind the flood
    assert max(took for _, took, _ in others) < PROMPT / 4, others
    # and everything is usable afterwards
    assert w.call("work", "anotherVM", "test.True").returncode == 0
