"""The relay loops driven directly over socket pairs: no processes, no daemon.

The peer's side of the data channel is played by hand: its bytes are written before the
loop runs (or by a thread where the peer must answer), and what the loop sent is read back
message by message once it returned.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable

from pyqrexec.call.relay import ServiceEnd, run_caller, run_service
from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import HEADER, hello, pack_exit_code, pack_header

STDIN, STDOUT = MsgType.DATA_STDIN, MsgType.DATA_STDOUT
STDERR, EXIT = MsgType.DATA_STDERR, MsgType.DATA_EXIT_CODE


def msg(msgtype: int, payload: bytes = b"") -> bytes:
    return pack_header(msgtype, len(payload)) + payload


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    return b"".join(iter(lambda: sock.recv(1 << 16), b""))


def split(wire: bytes) -> list[tuple[int, bytes]]:
    out = []
    while wire:
        t, n = HEADER.unpack_from(wire)
        out.append((t, wire[8 : 8 + n]))
        wire = wire[8 + n :]
    return out


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    return a, b


def logger() -> tuple[list[str], Callable[[str], None]]:
    lines: list[str] = []
    return lines, lines.append


def test_caller_relays_and_sends_its_stdin_eof_after_the_exit_code() -> None:
    chan, peer = pair()
    local_in, feeder = pair()  # input that never ends: the exit code ends the call
    local_out, out_reader = pair()
    err_r, err_w = os.pipe()
    feeder.sendall(b"typed")
    peer.sendall(hello(4) + msg(STDOUT, b"out") + msg(STDERR, b"err") + msg(STDOUT)
                 + msg(STDERR) + pack_exit_code(3))
    lines, log = logger()
    result = run_caller(chan, 4, local_in.fileno(), local_out.fileno(), log,
                        in_sock=local_in, out_sock=local_out, stderr_fd=err_w)
    chan.close()
    assert result.status == 3 and result.exit_status == 3
    assert not result.broken and not result.no_hello
    sent = split(read_all(peer))
    assert sent[0] == (MsgType.HELLO, struct.pack("<I", 4))
    assert sent[-1] == (STDIN, b"")  # the EOF, once, last
    assert [m for m in sent if m == (STDIN, b"")] == [(STDIN, b"")]
    assert read_all(out_reader) == b"out"  # and its EOF: the socket was shut down
    os.close(err_w)
    assert os.read(err_r, 100) == b"err"
    os.close(err_r)
    assert lines == []


def test_caller_prefix_in_chunks_of_the_negotiated_limit() -> None:
    chan, peer = pair()
    prefix = b"p" * 5000
    got: list[tuple[int, bytes]] = []

    def service() -> None:
        peer.sendall(hello(2))
        expected = len(hello(4)) + 3 * HEADER.size + len(prefix)
        wire = b""
        while len(wire) < expected:
            wire += peer.recv(1 << 16)
        got.extend(split(wire))
        peer.sendall(msg(STDOUT) + msg(STDERR) + pack_exit_code(0))

    thread = threading.Thread(target=service)
    thread.start()
    _, log = logger()
    result = run_caller(chan, 4, None, None, log, prefix=prefix)
    thread.join()
    assert result.exit_status == 0
    assert got == [(MsgType.HELLO, struct.pack("<I", 4)), (STDIN, prefix[:4096]),
                   (STDIN, prefix[4096:]), (STDIN, b"")]


def test_caller_broken_channel() -> None:
    """What came before the violation is written out; then the call ends with status 1."""
    chan, peer = pair()
    local_out, out_reader = pair()
    peer.sendall(hello(4) + msg(STDOUT, b"kept") + msg(MsgType.EXEC_CMDLINE, b"12345678"))
    lines, log = logger()
    result = run_caller(chan, 4, None, local_out.fileno(), log,
                        out_sock=local_out)
    assert result.broken and result.exit_status == 1
    local_out.close()
    assert read_all(out_reader) == b"kept"
    assert lines == ["data channel broken: message 0x200 of 8 bytes"]


def test_caller_without_hello() -> None:
    chan, peer = pair()
    peer.close()
    lines, log = logger()
    result = run_caller(chan, 4, None, None, log)
    assert result.no_hello and result.exit_status == 1
    assert lines == ["data channel: no usable HELLO from the service side"]


def test_caller_closed_early() -> None:
    chan, peer = pair()
    peer.sendall(hello(4) + msg(STDOUT, b"x"))
    peer.close()
    lines, log = logger()
    result = run_caller(chan, 4, None, None, log)
    assert result.status is None and result.exit_status == 255
    assert lines == ["vchan connection closed early"]


def socket_service() -> tuple[ServiceEnd, socket.socket, socket.socket]:
    """A socket service: (its end, the test's end of its stdin, of its stdout)."""
    stdin, stdin_far = pair()
    stdout, stdout_far = pair()
    end = ServiceEnd(stdin=stdin, stdout=stdout, stderr=None, pidfd=None, reap=lambda: 0)
    return end, stdin_far, stdout_far


def test_service_relays_and_sends_the_exit_code_last() -> None:
    chan, peer = pair()
    end, stdin_far, stdout_far = socket_service()
    stdout_far.sendall(b"answer")
    stdout_far.shutdown(socket.SHUT_WR)
    peer.sendall(hello(4) + msg(STDIN, b"question") + msg(STDIN))
    _, log = logger()
    status = run_service(chan, 4, end, log)
    chan.close()
    assert status == 0
    assert read_all(stdin_far) == b"question"
    sent = split(read_all(peer))
    assert sent[-1] == (EXIT, struct.pack("<i", 0))
    assert [m for m in sent if m[0] == EXIT] == [sent[-1]]
    assert (STDERR, b"") in sent  # no stderr: its EOF at once
    assert [p for t, p in sent if t == STDOUT] == [b"answer", b""]


def test_service_broken_channel_and_early_close() -> None:
    for wire, expected in [(hello(4) + msg(STDOUT, b"x" * 70000), "exceeds 65536"),
                           (hello(4), "vchan connection closed early")]:
        chan, peer = pair()
        end, _stdin_far, _stdout_far = socket_service()
        peer.sendall(wire)
        peer.shutdown(socket.SHUT_WR)
        lines, log = logger()
        assert run_service(chan, 4, end, log) == -1
        assert any(expected in line for line in lines), lines


def test_a_relay_run_in_process_leaves_the_scheduling_policy_alone() -> None:
    """Only the clients and the per-call handlers ask for SCHED_BATCH: a program that runs a
    relay among other work (a library user, this test) keeps its own policy."""
    before = os.sched_getscheduler(0)
    chan, peer = socket.socketpair()
    with chan, peer:
        peer.close()
        run_caller(chan, 4, None, None, lambda _m: None)
    assert os.sched_getscheduler(0) == before
