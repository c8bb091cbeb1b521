"""A relay reads a source into one reused buffer and queues views of it for the channel
(`call/relay.py`): the buffer must not be refilled while those views wait to be sent.

poll() reports a hang-up or an error on a descriptor whatever it was registered for. After a
single-socket switch the service's stdout source and its stdin sink are one socket, polled
for writing while the source's bytes wait: a hang-up there must not make the relay read
into the buffer the queue still points at. Each loop is handed that report directly.
"""

from __future__ import annotations

import select
import socket

from pyqrexec.call.relay import (
    Relay,
    ServiceEnd,
    Sink,
    Source,
    _Caller,
    _read_into,
    _Service,
)
from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.data import CallerOrder, CallerStream, ServiceStream
from pyqrexec.protocol.messages import HEADER, hello

FIRST, SECOND = b"A" * 100, b"B" * 100


def _relay(stream: type[CallerStream] | type[ServiceStream]) -> tuple[Relay, socket.socket]:
    """A relay whose peer's HELLO has arrived, and that peer's end of the channel."""
    chan, peer = socket.socketpair()
    relay = Relay(chan, 4, lambda message: None, stream)
    peer.sendall(hello(4))
    select.select([chan], [], [], 5)
    assert relay.read_actions() == [] and relay.version == 4
    return relay, peer


def _queue_one_read(relay: Relay, src: Source, far: socket.socket) -> None:
    """FIRST read into the source's buffer and queued, not sent; SECOND and a hang-up wait."""
    far.sendall(FIRST)
    select.select([src.fd], [], [], 5)
    n = _read_into(src)
    relay.queue_from_source(src, n)
    assert src.inflight == 1
    far.sendall(SECOND)
    far.close()


def _sent(relay: Relay, peer: socket.socket) -> bytes:
    relay.flush()
    peer.settimeout(5)
    opening = len(hello(4))
    data = b""
    while len(data) < opening + 8 + len(FIRST):  # our HELLO, then the first message
        data += peer.recv(65536)
    return data[opening:]


def test_service_loop_leaves_a_buffer_in_flight_alone() -> None:
    relay, peer = _relay(ServiceStream)
    stdin, _stdin_far = socket.socketpair()
    stdout, stdout_far = socket.socketpair()
    end = ServiceEnd(stdin=stdin, stdout=stdout, stderr=None, pidfd=None, reap=lambda: 0)
    service = _Service(relay, end, None)
    src = service.out_src
    assert src is not None
    _queue_one_read(relay, src, stdout_far)
    service._step({src.fd: select.POLLHUP})
    assert _sent(relay, peer)[:8 + len(FIRST)] == HEADER.pack(MsgType.DATA_STDOUT,
                                                               len(FIRST)) + FIRST


def test_caller_loop_leaves_a_buffer_in_flight_alone() -> None:
    relay, peer = _relay(CallerStream)
    local, local_far = socket.socketpair()
    src = Source(local.fileno(), MsgType.DATA_STDIN, sock=local)
    err_r, _err_w = socket.socketpair()
    caller = _Caller(relay, src, Sink(local.fileno(), sock=local), Sink(err_r.fileno()),
                     CallerOrder(True))
    _queue_one_read(relay, src, local_far)
    caller._step({src.fd: select.POLLHUP})
    assert _sent(relay, peer)[:8 + len(FIRST)] == HEADER.pack(MsgType.DATA_STDIN,
                                                               len(FIRST)) + FIRST
