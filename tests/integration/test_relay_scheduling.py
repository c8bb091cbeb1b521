"""A relay turns to SCHED_BATCH once its call moves bulk data; the programs it serves keep
the scheduler's default.

A relay woken by every small write of the service it reads must not preempt that service
(relay.py `_batch_scheduling`), but a short call is interactive: batching it would only make
its few wake-ups wait on a busy host. So each relay batches after its first MiB."""

from __future__ import annotations

import subprocess

from .fixtures.processes import QrexecHost
from .fixtures.world import NOBODY, World

_POLICY = "chrt -p {pid} | sed -n 's/.*policy: //p'"
_BULK = 2 << 20

# reports its relay's (its parent's) policy before and after the bulk, and its own
_SERVICE = f"""#!/bin/sh
read line
echo "before $({_POLICY.format(pid="$PPID")})"
head -c {_BULK} >/dev/null
echo "after $({_POLICY.format(pid="$PPID")}) self $({_POLICY.format(pid="$$")})"
"""
# the caller's local program: the same for the client's relay, and the service's report
_LOCAL = (f'echo go; read a; c1=$({_POLICY.format(pid="$PPID")}); head -c {_BULK} /dev/zero; '
          f'read b; c2=$({_POLICY.format(pid="$PPID")}); '
          f'echo "$a|$b|client $c1 $c2 self $({_POLICY.format(pid="$$")})" >&2')


def _reports(w: World) -> list[str]:
    w.service("anotherVM", "test.Sched", _SERVICE)
    r = subprocess.run(w.call_argv("work", "anotherVM", "test.Sched", "/bin/sh", "-c", _LOCAL),
                       env=w.call_env("work"), capture_output=True, timeout=60)
    assert r.returncode == 0, r
    return r.stderr.decode().strip().split("|")


def test_relays_batch_after_bulk_and_programs_never(host: QrexecHost) -> None:
    """An unprivileged agent's handler relay and the client's: interactive for the opening
    line, batched once 2 MiB went through; the service and the local program: never."""
    w = World(host)
    w.domain("work", 5)
    w.domain("anotherVM", 7, agent_wrapper=NOBODY, user="nobody")
    service_before, service_after, client = _reports(w)
    assert service_before == "before SCHED_OTHER"
    assert service_after == "after SCHED_BATCH self SCHED_OTHER"
    assert client == "client SCHED_OTHER SCHED_BATCH self SCHED_OTHER"


def test_root_agents_relay_is_never_batch(host: QrexecHost) -> None:
    """A root agent's service leads its own session, so its own scheduling group: batching
    its relay only slows it down, bulk or not."""
    w = World(host)
    w.domain("work", 5)
    w.domain("anotherVM", 7)
    service_before, service_after, _client = _reports(w)
    assert service_before == "before SCHED_OTHER"
    assert service_after == "after SCHED_OTHER self SCHED_OTHER"
