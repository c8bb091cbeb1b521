"""A relay reads a source into one reused buffer and queues views of it for the channel
(`call/relay.py`): the buffer must not be refilled while those views wait to be sent.

poll() reports a hang-up or an error on a descriptor whatever it was registered for. After a
single-socket switch the service's stdout source and its stdin sink are one socket, polled
for writing while the source's bytes wait: a hang-up there must not make the relay read
into the buffer the queue still points at. Each loop is handed that report directly.
"""

from __future__ import annotations

import mmap
import select
import socket
import threading

from pyqrexec.call.relay import (
    Relay,
    ServiceEnd,
    Sink,
    Source,
    _Caller,
    _pump_source,
    _read_into,
    _Service,
)
from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.data import CallerOrder, CallerStream, ServiceStream
from pyqrexec.protocol.messages import HEADER, hello

FIRST, SECOND = b"A" * 100, b"B" * 100


def _relay(stream: type[CallerStream] | type[ServiceStream],
           lean: bool = False) -> tuple[Relay, socket.socket]:
    """A relay whose peer's HELLO has arrived, and that peer's end of the channel."""
    chan, peer = socket.socketpair()
    relay = Relay(chan, 4, lambda message: None, stream, lean=lean)
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


def test_a_short_call_stays_in_its_first_buffers() -> None:
    """In a lean relay (the one-call clients'), a call's few small messages fit the first
    buffers: no large mapping is made (nor its module loaded); a read that fills a first
    buffer moves on to a large one, byte-exact."""
    relay, peer = _relay(CallerStream, lean=True)
    assert relay.first_buffer and len(relay.incoming.reader.free_space()) < 1 << 17
    peer.sendall(HEADER.pack(MsgType.DATA_STDOUT, 3) + b"abc")
    select.select([relay.chfd], [], [], 5)
    actions = relay.read_actions()
    assert [bytes(p) for _a, p in actions] == [b"abc"] and relay.first_buffer
    # now more than the first buffer holds, in messages of the largest size
    payloads = [bytes([i]) * 65536 for i in range(40, 44)]
    wire = b"".join(HEADER.pack(MsgType.DATA_STDOUT, len(p)) + p for p in payloads)
    threading.Thread(target=peer.sendall, args=(wire,), daemon=True).start()
    got: list[bytes] = []
    while len(got) < len(payloads):
        select.select([relay.chfd], [], [], 5)
        got += [bytes(p) for _a, p in relay.read_actions()]
    assert got == payloads
    assert not relay.first_buffer
    assert len(relay.incoming.reader.free_space()) >= (1 << 20) - 65536


def _take_queued(relay: Relay) -> bytes:
    """The payloads queued on the channel, taken off the queue (as if sent)."""
    wire = b"".join(bytes(data) for data, _src, _last in relay.outq)
    relay._drop_queue()
    payloads = b""
    while wire:
        _msgtype, length = HEADER.unpack_from(wire)
        payloads += wire[8 : 8 + length]
        wire = wire[8 + length :]
    return payloads


def test_a_source_moves_to_a_large_buffer_once_a_read_fills_the_first() -> None:
    relay, _peer = _relay(CallerStream, lean=True)
    relay._drop_queue()  # its HELLO
    local, far = socket.socketpair()
    src = Source(local.fileno(), MsgType.DATA_STDIN, sock=local, lean=True)
    first = src.buf
    far.sendall(b"s" * 10)
    select.select([src.fd], [], [], 5)
    assert _pump_source(relay, src) is False
    assert src.buf is first and _take_queued(relay) == b"s" * 10
    sent = bytes(range(256)) * (2 * len(first) // 256)
    far.sendall(sent)  # within the socket's buffer
    got = b""
    while src.buf is first:
        select.select([src.fd], [], [], 5)
        assert _pump_source(relay, src) is False
        got += _take_queued(relay)
    assert len(src.buf) == 16 * 65536
    while len(got) < len(sent):
        select.select([src.fd], [], [], 5)
        assert _pump_source(relay, src) is False
        got += _take_queued(relay)
    assert got == sent


def test_without_lean_buffers_are_mapped_from_the_start() -> None:
    """A process with many calls in flight (a call process, the client library) gets the
    mapped buffers at once: their pages cost memory only once used."""
    relay, _peer = _relay(CallerStream)
    assert not relay.first_buffer
    assert len(relay.incoming.reader.free_space()) == 1 << 20
    local, _far = socket.socketpair()
    src = Source(local.fileno(), MsgType.DATA_STDIN, sock=local)
    assert len(src.buf) == 16 * 65536
    assert isinstance(src.buf.obj, mmap.mmap)
