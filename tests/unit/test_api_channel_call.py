"""The library's caller (`pyqrexec.api.calls.ChannelCall`) over socket pairs, against the
CLIs' relay (`run_caller`): the same peer script, the same bytes sent; and hostile peers.

The peer's side is played by hand in a thread; what the caller sent is read back message
by message.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from collections.abc import Callable

import pytest

from pyqrexec.api.calls import ChannelCall
from pyqrexec.api.errors import CallAborted
from pyqrexec.call.relay import run_caller
from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import HEADER, hello, pack_exit_code, pack_header

STDIN, STDOUT = MsgType.DATA_STDIN, MsgType.DATA_STDOUT
STDERR = MsgType.DATA_STDERR

Peer = Callable[[socket.socket], None]


def msg(msgtype: int, payload: bytes = b"") -> bytes:
    return pack_header(msgtype, len(payload)) + payload


def read_msg(sock: socket.socket) -> tuple[int, bytes] | None:
    head = b""
    while len(head) < 8:
        chunk = sock.recv(8 - len(head))
        if not chunk:
            return None
        head += chunk
    t, n = HEADER.unpack(head)
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        assert chunk
        body += chunk
    return t, body


class Recorder:
    """Plays the service side: `script(peer)` in a thread, then records what the caller
    sent until it closed the channel."""

    def __init__(self, script: Peer) -> None:
        self.chan, self.peer = socket.socketpair()
        self.peer.settimeout(10)
        self.sent: list[tuple[int, bytes]] = []
        self.script = script
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        self.script(self.peer)
        while (m := read_msg(self.peer)) is not None:
            self.sent.append(m)
        self.peer.close()

    def received(self) -> list[tuple[int, bytes]]:
        self.thread.join(10)
        return self.sent


def until_stdin_eof(peer: socket.socket, into: list[tuple[int, bytes]]) -> None:
    while (m := read_msg(peer)) is not None:
        into.append(m)
        if m == (STDIN, b""):
            return


def service_echoing(version: int) -> Callable[[list[tuple[int, bytes]]], Peer]:
    """HELLO, read the caller's input to its EOF, answer with output and status 5."""

    def make(early: list[tuple[int, bytes]]) -> Peer:
        def script(peer: socket.socket) -> None:
            peer.sendall(hello(version))
            until_stdin_eof(peer, early)
            peer.sendall(msg(STDOUT, b"out") + msg(STDERR, b"err") + msg(STDOUT)
                         + msg(STDERR) + pack_exit_code(5))
        return script

    return make


def exit_at_once(early: list[tuple[int, bytes]]) -> Peer:
    """HELLO and EXIT_CODE 0 without reading anything: input must stop, its EOF follows."""

    def script(peer: socket.socket) -> None:
        peer.sendall(hello(3) + msg(STDOUT) + msg(STDERR) + pack_exit_code(0))

    return script


def through_cli_relay(make: Callable[[list[tuple[int, bytes]]], Peer], data: bytes | None
                      ) -> tuple[int, list[tuple[int, bytes]]]:
    early: list[tuple[int, bytes]] = []
    rec = Recorder(make(early))
    local_in = None
    feeder = ours = None
    if data is not None:
        ours, feeder = socket.socketpair()
        feeder.sendall(data)
        if data:
            feeder.shutdown(socket.SHUT_WR)
        local_in = ours.fileno()
    out_r, out_w = socket.socketpair()
    err_r, err_w = os.pipe()
    result = run_caller(rec.chan, 4, local_in, out_w.fileno(), lambda _m: None, in_sock=ours,
                        out_sock=out_w, stderr_fd=err_w)
    rec.chan.close()
    for closable in (feeder, ours, out_r, out_w):
        if closable is not None:
            closable.close()
    os.close(err_r)
    os.close(err_w)
    return result.exit_status, early + rec.received()


def through_library(make: Callable[[list[tuple[int, bytes]]], Peer], data: bytes | None,
                    close: bool = True) -> tuple[int, list[tuple[int, bytes]], bytes, bytes]:
    early: list[tuple[int, bytes]] = []
    rec = Recorder(make(early))

    async def main() -> tuple[int, bytes, bytes]:
        call = ChannelCall(rec.chan, has_input=data is not None)
        if data:
            try:
                await call.send(data)
            except BrokenPipeError:
                # the service exited first: its input is over (as with a CLI's)
                assert not close
            if close:
                await call.close_stdin()
        out = await call.stdout.read()
        err = await call.stderr.read()
        return await call.wait(), out, err

    status, out, err = asyncio.run(main())
    return status, early + rec.received(), out, err


@pytest.mark.parametrize("data", [None, b"input bytes"])
def test_same_bytes_as_the_cli_relay(data: bytes | None) -> None:
    make = service_echoing(4)
    cli_status, cli_sent = through_cli_relay(make, data)
    status, sent, out, err = through_library(make, data)
    assert status == cli_status == 5
    assert (out, err) == (b"out", b"err")
    assert sent == cli_sent
    expected = [(MsgType.HELLO, struct.pack("<I", 4))]
    if data:
        expected.append((STDIN, data))
    assert sent == [*expected, (STDIN, b"")]


def test_input_stops_at_the_exit_code_and_its_eof_follows_as_from_the_cli() -> None:
    # the CLI's input never ends here (an open socket with nothing in it)
    cli_status, cli_sent = through_cli_relay(exit_at_once, b"")
    status, sent, _out, _err = through_library(exit_at_once, b"x", close=False)
    assert status == cli_status == 0
    assert cli_sent[-1] == (STDIN, b"") and sent[-1] == (STDIN, b"")
    assert [m for m in sent if m[0] == STDIN and m[1] == b""] == [(STDIN, b"")]


def test_large_input_goes_in_messages_of_the_negotiated_limit() -> None:
    data = bytes(range(256)) * 1024  # 256 KiB
    status, sent, out, _err = through_library(service_echoing(2), data)
    assert status == 5 and out == b"out"
    payloads = [p for t, p in sent if t == STDIN and p]
    assert b"".join(payloads) == data
    assert max(len(p) for p in payloads) == 4096  # version 2's chunk limit


def hostile(wire: bytes, close: bool = True) -> Callable[[list[tuple[int, bytes]]], Peer]:
    def make(early: list[tuple[int, bytes]]) -> Peer:
        def script(peer: socket.socket) -> None:
            peer.sendall(wire)
            if close:
                peer.shutdown(socket.SHUT_WR)
        return script
    return make


@pytest.mark.parametrize("wire,status", [
    (hello(3) + msg(0x999, b"junk"), 1),                     # unknown message type
    (hello(3) + pack_header(STDOUT, 1 << 30), 1),            # beyond the chunk limit
    (hello(3) + msg(STDOUT, b"partial"), 255),               # no exit code: EOF early
    (b"\x01\x02", 125),                                      # no usable HELLO
    (msg(STDOUT, b"no hello first"), 125),
])
def test_hostile_service_side_ends_only_this_call(wire: bytes, status: int) -> None:
    rec = Recorder(hostile(wire)(early := []))

    async def main() -> tuple[int, bytes]:
        call = ChannelCall(rec.chan, no_hello_status=125)
        out = await call.stdout.read()
        await call.stderr.read()
        return await call.wait(), out

    got, _out = asyncio.run(main())
    rec.received()
    assert got == status
    assert early == []


def test_abort_mid_stream_closes_the_channel_and_wait_raises() -> None:
    ended = threading.Event()

    def make(early: list[tuple[int, bytes]]) -> Peer:
        def script(peer: socket.socket) -> None:
            peer.sendall(hello(3) + msg(STDOUT, b"first"))
        return script

    rec = Recorder(make([]))

    async def main() -> None:
        call = ChannelCall(rec.chan)
        assert await call.stdout.readexactly(5) == b"first"
        call.abort()
        assert await call.stdout.read() == b""
        with pytest.raises(CallAborted):
            await call.wait()
        with pytest.raises(BrokenPipeError):
            await call.send(b"more")
        ended.set()

    asyncio.run(main())
    sent = rec.received()  # returns: the peer saw the channel's EOF
    assert ended.is_set()
    assert sent[0][0] == MsgType.HELLO


def test_unread_output_pauses_the_channel_and_resumes() -> None:
    big = b"y" * (64 << 10)
    count = 400  # 25 MiB: more than the pause threshold, far more than socket buffers

    def make(early: list[tuple[int, bytes]]) -> Peer:
        def script(peer: socket.socket) -> None:
            peer.sendall(hello(3))
            for _ in range(count):
                peer.sendall(msg(STDOUT, big))
            peer.sendall(msg(STDOUT) + msg(STDERR) + pack_exit_code(0))
        return script

    rec = Recorder(make([]))

    async def main() -> int:
        call = ChannelCall(rec.chan, has_input=False)
        # let the peer fill what we buffer: reading must pause well below all of it
        for _ in range(200):
            await asyncio.sleep(0)
        assert len(call.stdout._buffer) < 12 << 20  # type: ignore[attr-defined]
        total = 0
        while chunk := await call.stdout.read(1 << 20):
            total += len(chunk)
        assert total == count * len(big)
        return await call.wait()

    assert asyncio.run(main()) == 0
    rec.received()
