"""Payloads bound for one local writer are written together (`call/relay.py`, `_deliver`
and `_write_sink`): one writev per run of messages, never more iovecs than the kernel takes
in one call, and what the writer does not take now queued in order, copied."""

from __future__ import annotations

import os
import socket

from pyqrexec.call.relay import Sink, _deliver, _drain_sink, _write_sink
from pyqrexec.protocol.data import Action


def _pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    ours.setblocking(False)
    return ours, theirs


def _read_all(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(5)
    data = b""
    while len(data) < size:
        data += sock.recv(1 << 20)
    return data


def test_many_small_pieces_in_order() -> None:
    """More pieces than one writev takes (a peer's 1-byte messages): all arrive, in order."""
    ours, theirs = _pair()
    sink = Sink(ours.fileno(), sock=ours)
    pieces = [memoryview(bytes([i % 251])) for i in range(3000)]
    _write_sink(sink, pieces)
    assert not sink.closed and not sink.pending
    assert _read_all(theirs, 3000) == b"".join(pieces)


def test_what_is_not_taken_is_queued_in_order() -> None:
    """A writer that takes part: the rest is queued, copied (the views' buffer is reused),
    and written before anything later."""
    ours, theirs = _pair(sndbuf=4096)
    sink = Sink(ours.fileno(), sock=ours)
    buf = bytearray(os.urandom(16 * 65536))
    view = memoryview(buf)
    _write_sink(sink, [view[i : i + 65536] for i in range(0, len(buf), 65536)])
    assert sink.pending and sink.pending_size < len(buf)
    expected = bytes(buf)
    buf[:] = bytes(len(buf))  # the next read reuses the buffer
    _write_sink(sink, [memoryview(b"later")])
    received = b""
    theirs.settimeout(5)
    while len(received) < len(expected) + 5:
        received += theirs.recv(1 << 20)
        _drain_sink(sink)
    assert received == expected + b"later"
    assert sink.pending_size == 0


def test_runs_go_to_their_sinks_and_other_actions_in_between() -> None:
    """stdout and stderr payloads interleaved, an EOF after them: each run to its sink, the
    EOF handled only once the payloads before it were written."""
    out, out_peer = _pair()
    err, err_peer = _pair()
    sinks = {Action.OUTPUT: Sink(out.fileno(), sock=out), Action.ERROR: Sink(err.fileno())}
    seen: list[tuple[Action, int, int]] = []

    def handle(action: Action, payload: memoryview) -> None:
        out_peer.setblocking(False)
        try:
            written = len(out_peer.recv(1 << 16, socket.MSG_PEEK))
        except BlockingIOError:
            written = 0
        seen.append((action, len(payload), written))

    actions = [(Action.OUTPUT, memoryview(b"a" * 10)), (Action.OUTPUT, memoryview(b"b" * 5)),
               (Action.ERROR, memoryview(b"e")), (Action.OUTPUT, memoryview(b"c")),
               (Action.OUTPUT_EOF, memoryview(b""))]
    _deliver(actions, sinks.get, handle)
    assert seen == [(Action.OUTPUT_EOF, 0, 16)]
    assert _read_all(out_peer, 16) == b"a" * 10 + b"b" * 5 + b"c"
    assert _read_all(err_peer, 1) == b"e"
