"""One caller cannot starve the others of a target's data ports (docs/daemon.md "Data ports").

The attack is played from inside a domain: `attacker` floods `target` with policy-allowed calls
to a service that never ends while the caller holds it, speaking its own agent's trigger socket
and data vchans the way any program in the domain can. `caller` shares the attacker's half of
the target's port table (both have a higher domid than the target).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pyqrexec.daemon.worker import BUSY_WAIT
from pyqrexec.protocol.messages import pack_trigger4
from pyqrexec.protocol.ports import DEFAULT_SHARE, HALF
from pyqrexec.transport import vchan

from .fixtures.processes import Domain, wait_for
from .fixtures.rawcalls import children, data_handshake, recv_or_eof
from .fixtures.world import World

#: more calls than a whole half of the target's table
FLOOD = HALF + 8
#: the acceptance bound for an answer during the flood
ANSWER_WITHIN = 2.0
#: a refusal comes after the bounded wait for a port, with the same margin
REFUSED_WITHIN = BUSY_WAIT + ANSWER_WITHIN


@dataclass(eq=False)
class _Call:
    trigger: socket.socket
    sent: float = 0.0
    answered: float | None = None
    refused: bool = False
    channel: socket.socket | None = None
    error: BaseException | None = None


class Flood:
    """`count` concurrent calls from `dom` to `target`'s `service`, each held open."""

    def __init__(self, dom: Domain, target: bytes, service: bytes, count: int) -> None:
        self.dom = dom
        self.target = target
        self.service = service
        self.changed = threading.Condition()
        self.calls = [_Call(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                      for _ in range(count)]
        for call in self.calls:
            threading.Thread(target=self._run, args=(call,), daemon=True).start()

    def _run(self, call: _Call) -> None:
        try:
            call.trigger.connect(self.dom.agent_socket)
            call.sent = time.monotonic()
            call.trigger.sendall(pack_trigger4(self.service, self.target, b"SOCKET"))
            answer = recv_or_eof(call.trigger, 8)
            call.answered = time.monotonic()
            if len(answer) < 8:
                call.refused = True
                return
            domain, port = struct.unpack("<II", answer)
            listener, path = vchan.listen(str(self.dom.host.vchan_dir), self.dom.domid,
                                          domain, port, pair_dirs=False)
            chan = vchan.accept_one(listener, path, 30)
            chan.settimeout(30)
            data_handshake(chan, 3)
            # the service now runs and waits for a stdin EOF that this caller never sends
            call.channel = chan
        except BaseException as err:  # noqa: BLE001 - reported by the test
            call.error = err
        finally:
            with self.changed:
                self.changed.notify_all()

    @property
    def held(self) -> list[_Call]:
        return [c for c in self.calls if c.channel is not None]

    @property
    def refused(self) -> list[_Call]:
        return [c for c in self.calls if c.refused]

    def wait(self, done: Callable[[], bool], timeout: float = 120) -> None:
        with self.changed:
            assert self.changed.wait_for(done, timeout), (
                f"flood: {len(self.held)} held, {len(self.refused)} refused")

    def stop(self) -> None:
        """Hang up every call: the services see EOF and end, the ports are released."""
        for call in self.calls:
            for sock in (call.channel, call.trigger):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()


pytestmark = pytest.mark.world(domains={"target": 5, "attacker": 7, "caller": 9})


@pytest.fixture
def world(world: World) -> World:
    """The conftest's world with target's services."""
    w = world
    w.service("target", "test.Hold", "#!/bin/sh\nexec cat >/dev/null\n")
    w.service("target", "test.Echo", "#!/bin/sh\nexec cat\n")
    return w


def test_flood_from_one_domain_leaves_ports_for_others(world: World) -> None:
    attacker = world.host.domains["attacker"]
    target = world.host.domains["target"]
    flood = Flood(attacker, b"target", b"test.Hold", FLOOD)
    try:
        # settled: every call either holds a port or was refused; a code that lets one
        # caller take its whole half stops at HALF held calls, the rest waiting
        flood.wait(lambda: len(flood.held) >= HALF
                   or len(flood.held) + len(flood.refused) == FLOOD)
        errors = [c.error for c in flood.calls if c.error is not None]
        assert not errors, errors

        start = time.monotonic()
        try:
            r = world.call("caller", "target", "test.Echo", input=b"still served\n",
                           timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"caller -> target hung while the attacker held {len(flood.held)} "
                        "ports")
        elapsed = time.monotonic() - start
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"still served\n"
        assert elapsed < ANSWER_WITHIN, f"caller -> target took {elapsed:.2f} s"

        # the attacker holds its share and not one port more; the rest was refused promptly
        assert len(flood.held) == DEFAULT_SHARE
        assert len(flood.refused) == FLOOD - DEFAULT_SHARE
        slowest = max(c.answered - c.sent for c in flood.refused if c.answered)
        assert slowest < REFUSED_WITHIN, f"a refusal took {slowest:.2f} s"
        # one line for the cause, not one per attempt (the count follows later)
        log = target.daemon_log.read_text()
        assert 1 <= log.count("holds its share") <= 2, log
    finally:
        flood.stop()
    # the hung-up calls give their ports back: the attacker is served again
    assert target.agent is not None
    wait_for(lambda: not children(target.agent.pid), 30, "the target's handlers to end")
    r = world.call("attacker", "target", "test.Echo", input=b"again\n", timeout=30)
    assert (r.returncode, r.stdout) == (0, b"again\n")


def test_refused_call_exits_126_promptly(world: World) -> None:
    """qrexec-client-vm in the attacker sees an ordinary refusal once its share is used."""
    attacker = world.host.domains["attacker"]
    flood = Flood(attacker, b"target", b"test.Hold", DEFAULT_SHARE)
    try:
        flood.wait(lambda: len(flood.held) + len(flood.refused) == DEFAULT_SHARE)
        assert len(flood.held) == DEFAULT_SHARE
        start = time.monotonic()
        r = world.call("attacker", "target", "test.Echo", input=b"", timeout=30)
        elapsed = time.monotonic() - start
        assert (r.returncode, r.stderr) == (126, b"Request refused\n")
        assert elapsed < REFUSED_WITHIN, f"the refusal took {elapsed:.2f} s"
    finally:
        flood.stop()
