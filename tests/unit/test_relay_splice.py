"""The relays' spliced paths, driven over socket pairs in-process: the service's bulk stdout,
and a caller's bulk stdin when it is a pipe.

A service's stdout that has delivered 1 MiB is spliced from its socket into a pipe and from
the pipe into the channel; only the headers are written by the relay. What reaches the peer
must be the same messages as by plain reads: the exact bytes, each payload within the chunk
limit, then the EOF and the exit code last. `os.splice` is wrapped to see which path ran
(it still does the work), or made to fail as on a kernel or filter that refuses it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from pyqrexec.call.relay import ServiceEnd, run_caller, run_service
from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import HEADER, hello, pack_header
from tests.descriptors import open_fds, opened_since

STDIN, STDOUT = MsgType.DATA_STDIN, MsgType.DATA_STDOUT
STDERR, EXIT = MsgType.DATA_STDERR, MsgType.DATA_EXIT_CODE
MiB = 1 << 20
T = TypeVar("T")


def pattern(size: int) -> bytes:
    block = hashlib.sha256(b"splice").digest() * 2048  # 64 KiB, not all-zero
    return (block * (size // len(block) + 1))[:size]


class Splices:
    """`os.splice` as it is, recording (fd_in, fd_out, bytes moved) of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.real = os.splice

    def __call__(self, src: int, dst: int, count: int, *args: object, **kw: object) -> int:
        n: int = self.real(src, dst, count, *args, **kw)  # type: ignore[arg-type]
        self.calls.append((src, dst, n))
        return n

    def into(self, fd: int) -> int:
        return sum(n for _src, dst, n in self.calls if dst == fd)


@pytest.fixture
def splices(monkeypatch: pytest.MonkeyPatch) -> Splices:
    spy = Splices()
    monkeypatch.setattr(os, "splice", spy)
    return spy


def messages(wire: bytes) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(wire)
    while view:
        t, n = HEADER.unpack_from(view)
        yield t, view[8 : 8 + n]
        view = view[8 + n :]


def relay_output(data: bytes, *, version: int = 4, write: int = 8192,
                 chan_buffer: int | None = None) -> tuple[int, bytes, int]:
    """Run the service relay while a "service" writes `data` to its stdout in `write`-byte
    chunks (as `head` does) and exits 0; (status, what the peer received, the channel's
    fd)."""
    chan, peer = socket.socketpair()
    if chan_buffer is not None:  # a full channel: splices that move part of a payload
        chan.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, chan_buffer)
    stdin, stdin_far = socket.socketpair()
    stdout, stdout_far = socket.socketpair()
    end = ServiceEnd(stdin=stdin, stdout=stdout, stderr=None, pidfd=None, reap=lambda: 0)
    received = bytearray()

    def service() -> None:
        view = memoryview(data)
        for off in range(0, len(view), write):
            stdout_far.sendall(view[off : off + write])
        stdout_far.close()

    def peer_side() -> None:
        peer.sendall(hello(version) + pack_header(STDIN, 0))
        while chunk := peer.recv(MiB):
            received.extend(chunk)

    def relay() -> int:
        try:
            return run_service(chan, version, end, lambda _m: None)
        finally:
            chan.close()

    fd = chan.fileno()
    status = run_beside(relay, service, peer_side)
    stdin_far.close()
    return status, bytes(received), fd


def run_beside(body: Callable[[], T], *others: Callable[[], None]) -> T:
    """`body` here while each of `others` runs in a thread of its own; all joined after."""
    threads = [threading.Thread(target=other) for other in others]
    for t in threads:
        t.start()
    try:
        return body()
    finally:
        for t in threads:
            t.join(60)


def check_messages(wire: bytes, data: bytes, limit: int) -> None:
    """The wire (the relay's HELLO went before it) is STDOUT payloads within `limit` that
    make `data`, their EOF, the stderr EOF, and the exit code last."""
    sent = list(messages(wire))
    out = [p for t, p in sent if t == STDOUT]
    assert all(0 < len(p) <= limit for p in out[:-1])
    assert len(out[-1]) == 0
    assert b"".join(out) == data
    assert (STDERR, b"") in [(t, bytes(p)) for t, p in sent]
    assert sent[-1][0] == EXIT and bytes(sent[-1][1]) == struct.pack("<i", 0)
    assert {t for t, _p in sent} == {STDOUT, STDERR, EXIT}


def test_bulk_output_is_spliced_and_exact(splices: Splices) -> None:
    data = pattern(96 * MiB)
    status, wire, chfd = relay_output(data)
    assert status == 0
    check_messages(wire, data, 65536)
    # all but the first MiB (read plainly) went service socket -> pipe -> channel
    assert splices.into(chfd) >= len(data) - 2 * MiB
    assert sum(n for _s, d, n in splices.calls if d != chfd) == splices.into(chfd)


def test_a_full_channel_takes_spliced_payloads_in_parts(splices: Splices) -> None:
    data = pattern(32 * MiB)
    status, wire, chfd = relay_output(data, write=65536, chan_buffer=16384)
    assert status == 0
    check_messages(wire, data, 65536)
    assert splices.into(chfd) >= len(data) - 2 * MiB


def test_short_output_is_read_plainly(splices: Splices) -> None:
    """A call with little output (the latency path) never pays for a pipe."""
    data = pattern(MiB - 1)
    status, wire, _chfd = relay_output(data)
    assert status == 0
    check_messages(wire, data, 65536)
    assert splices.calls == []


def test_protocol_2_chunks_are_not_spliced(splices: Splices) -> None:
    """4 KiB messages would cost a splice each: a version-2 peer gets plain reads."""
    data = pattern(4 * MiB)
    status, wire, _chfd = relay_output(data, version=2)
    assert status == 0
    check_messages(wire, data, 4096)
    assert splices.calls == []


@pytest.fixture(params=[errno.EINVAL, errno.ENOSYS, errno.EPERM])
def refusals(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """`os.splice` refused with each error a kernel or a system-call filter gives; the list
    of attempts (their source fds)."""
    attempts: list[int] = []

    def refuse(src: int, dst: int, count: int, *args: object, **kw: object) -> int:
        attempts.append(src)
        raise OSError(request.param, os.strerror(request.param))

    monkeypatch.setattr(os, "splice", refuse)
    return attempts


def test_refused_splice_falls_back_to_reading(refusals: list[int]) -> None:
    """A kernel or a system-call filter that refuses splice(): one attempt, then the plain
    path for the rest of the call, with the same bytes on the wire."""
    data = pattern(48 * MiB)
    status, wire, _chfd = relay_output(data)
    assert status == 0
    check_messages(wire, data, 65536)
    assert len(refusals) == 1


def test_pipes_are_closed_after_the_call(splices: Splices) -> None:
    before = open_fds()
    relay_output(pattern(8 * MiB))
    assert splices.calls
    assert opened_since(before) == {}






def test_a_peer_that_closes_mid_splice_ends_the_call(splices: Splices) -> None:
    """The caller's end goes away while spliced payloads are queued: the relay gives up
    sending (EPIPE), sees the channel's end and returns -1, as on the plain path."""
    chan, peer = socket.socketpair()
    stdin, stdin_far = socket.socketpair()
    stdout, stdout_far = socket.socketpair()
    end = ServiceEnd(stdin=stdin, stdout=stdout, stderr=None, pidfd=None, reap=lambda: 0)
    data = pattern(64 * MiB)

    def service() -> None:
        try:
            stdout_far.sendall(data)
        except OSError:  # the relay closed its end when the call ended
            pass

    def peer_side() -> None:
        peer.sendall(hello(4))
        got = 0
        while got < 4 * MiB:
            got += len(peer.recv(MiB))
        peer.close()

    threads = [threading.Thread(target=service), threading.Thread(target=peer_side)]
    for t in threads:
        t.start()
    lines: list[str] = []
    assert run_service(chan, 4, end, lines.append) == -1
    chan.close()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    stdin_far.close()
    stdout_far.close()
    assert splices.calls
    assert "vchan connection closed early" in lines


def relay_input(data: bytes, *, version: int = 4) -> tuple[int | None, bytes, int]:
    """Run the caller relay with `data` written into its stdin pipe (as `head | qrexec-client`
    does) while a "service side" peer reads the channel, then sends its EOFs and exit code
    0; (status, what the peer received, the channel's fd)."""
    chan, peer = socket.socketpair()
    rfd, wfd = os.pipe()
    out_r, out_w = os.pipe()
    received = bytearray()

    def writer() -> None:
        view = memoryview(data)
        for off in range(0, len(view), 8192):
            os.write(wfd, view[off : off + 8192])
        os.close(wfd)

    def peer_side() -> None:
        peer.sendall(hello(version))
        while chunk := peer.recv(MiB):
            received.extend(chunk)
            wire = bytes(received)
            if wire.endswith(pack_header(STDIN, 0)):  # the caller's EOF: answer and end
                peer.sendall(pack_header(STDOUT, 0) + pack_header(STDERR, 0)
                             + pack_header(EXIT, 4) + struct.pack("<i", 0))
                break
        peer.shutdown(socket.SHUT_WR)
        while chunk := peer.recv(MiB):
            received.extend(chunk)

    def relay() -> int | None:
        try:
            return run_caller(chan, version, rfd, out_w, lambda _m: None).exit_status
        finally:
            chan.close()

    fd = chan.fileno()
    status = run_beside(relay, writer, peer_side)
    for extra in (rfd, out_r):
        try:
            os.close(extra)
        except OSError:
            pass
    return status, bytes(received), fd


def check_input(wire: bytes, data: bytes, limit: int) -> None:
    """The wire after the caller's HELLO: STDIN payloads within `limit` making `data`, then
    the STDIN EOF."""
    sent = list(messages(wire))
    assert {t for t, _p in sent} == {STDIN}
    payloads = [bytes(p) for _t, p in sent]
    assert all(0 < len(p) <= limit for p in payloads[:-1])
    assert payloads[-1] == b""
    assert b"".join(payloads) == data


def test_bulk_stdin_from_a_pipe_is_spliced_and_exact(splices: Splices) -> None:
    """A caller whose stdin is a pipe splices it into the channel past the first MiB,
    straight from that pipe (no pipe of its own between)."""
    data = pattern(64 * MiB)
    status, wire, chfd = relay_input(data)
    assert status == 0
    check_input(wire[len(hello(4)):], data, 65536)
    assert splices.into(chfd) >= len(data) - 2 * MiB
    assert all(d == chfd for _s, d, _n in splices.calls)


def test_short_stdin_is_read_plainly(splices: Splices) -> None:
    data = pattern(MiB - 1)
    status, wire, _chfd = relay_input(data)
    assert status == 0
    check_input(wire[len(hello(4)):], data, 65536)
    assert splices.calls == []


def test_protocol_2_stdin_is_not_spliced(splices: Splices) -> None:
    data = pattern(4 * MiB)
    status, wire, _chfd = relay_input(data, version=2)
    assert status == 0
    check_input(wire[len(hello(2)):], data, 4096)
    assert splices.calls == []


def test_refused_stdin_splice_falls_back_to_reading(refusals: list[int]) -> None:
    """splice() refused when a caller's stdin is spliced into the channel: the payloads
    queued in the pipe are read out and sent as they were, the rest read plainly; one
    attempt, the same bytes on the wire."""
    data = pattern(16 * MiB)
    status, wire, _chfd = relay_input(data)
    assert status == 0
    check_input(wire[len(hello(4)):], data, 65536)
    assert len(refusals) == 1
