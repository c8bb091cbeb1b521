"""The relays run as SCHED_BATCH, the programs they serve as the scheduler's default.

A relay woken by every small write of the service it reads must not preempt that service
(relay.py `_batch_scheduling`); the service itself keeps the normal policy."""

from __future__ import annotations

import subprocess

from .fixtures.processes import QrexecHost
from .fixtures.world import NOBODY, World

# the caller's line arrives through the handler's relay: by then that relay has switched
_REPORT = """#!/bin/sh
read line
chrt -p $PPID | sed -n 's/.*policy: //p'
chrt -p $$ | sed -n 's/.*policy: //p'
"""


def test_handler_relay_is_batch_and_service_is_not(host: QrexecHost) -> None:
    w = World(host)
    w.domain("work", 5)
    w.domain("anotherVM", 7, agent_wrapper=NOBODY, user="nobody")
    w.service("anotherVM", "test.Sched", _REPORT)
    r = w.call("work", "anotherVM", "test.Sched", input=b"go\n")
    assert (r.returncode, r.stdout) == (0, b"SCHED_BATCH\nSCHED_OTHER\n"), r.stderr


def test_root_agents_relay_is_not_batch(host: QrexecHost) -> None:
    """A root agent's service leads its own session, so its own scheduling group: batching
    its relay only slows it down."""
    w = World(host)
    w.domain("work", 5)
    w.domain("anotherVM", 7)
    w.service("anotherVM", "test.Sched", _REPORT)
    r = w.call("work", "anotherVM", "test.Sched", input=b"go\n")
    assert (r.returncode, r.stdout) == (0, b"SCHED_OTHER\nSCHED_OTHER\n"), r.stderr


def test_client_relay_is_batch_and_local_program_is_not(host: QrexecHost) -> None:
    w = World(host)
    w.domain("work", 5)
    w.domain("anotherVM", 7)
    w.service("anotherVM", "test.Echo", "#!/bin/sh\nexec cat\n")
    # the local program is started before the relay; it asks about its parent, the client,
    # once the service's answer has come back through that client's relay
    program = ("echo go; read line; chrt -p $PPID | sed -n 's/.*policy: //p' >&2; "
               "chrt -p $$ | sed -n 's/.*policy: //p' >&2")
    r = subprocess.run([*w.call_argv("work", "anotherVM", "test.Echo", "/bin/sh", "-c",
                                     program)],
                       env=w.call_env("work"), capture_output=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, b"SCHED_BATCH\nSCHED_OTHER\n"), r
