"""Flow control on the control channel (docs/reference/protocol.md#flow-control): a peer that
does not read makes the other side stop reading what would produce more messages, instead of
queueing without bound.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import termios
import threading
import time

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import HEADER, hello

from .fixtures.hostile import RawClient, recv_exact, refused, start_attacked_daemon
from .fixtures.processes import QrexecHost, wait_for
from .test_hostile_agent import PROBE, assert_alive_and_refusing, raw4

#: far more than any bounded backlog: reaching it means the peer never stopped reading
_FLOOD_LIMIT = 64 << 20
#: the peer has stopped reading once nothing more fits for this long
_STALL = 2.0


def _flood(sock: socket.socket, message: bytes) -> int:
    """Send `message` again and again until the peer stops reading; the number of whole
    messages sent (a partial last one is completed)."""
    batch = message * 256
    sent = 0
    sock.setblocking(False)
    try:
        while sent < _FLOOD_LIMIT:
            off = sent % len(batch)
            try:
                sent += sock.send(batch[off:])
                continue
            except BlockingIOError:
                pass
            _, writable, _ = select.select([], [sock], [], _STALL)
            if not writable:
                break
        else:
            raise AssertionError(f"the peer read {sent} bytes and never stopped")
    finally:
        sock.setblocking(True)
    left = -sent % len(message)
    if left:
        # the peer reads again only once we read its answers: completing the last message
        # here could block for ever, so a thread does it while the test reads
        rest = message[len(message) - left :]
        threading.Thread(target=sock.sendall, args=(rest,), daemon=True).start()
    return (sent + left) // len(message)


def _unread(sock: socket.socket) -> int:
    """What the kernel still holds of this socket's output (0 once the peer read it all;
    counted in buffer memory, so more than the bytes)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", buf)[0])


def _assert_answers(got: bytes, answer: bytes, count: int) -> None:
    """`got` is `answer` `count` times over, in order (read at once: a recv per answer
    would make the check cost more than the flood)."""
    if got != answer * count:
        first = next(i for i in range(count)
                     if got[i * len(answer):(i + 1) * len(answer)] != answer)
        raise AssertionError(f"answer {first} of {count} differs: "
                             f"{got[first * len(answer):(first + 1) * len(answer)]!r}")


# -- daemon ----------------------------------------------------------------------------------
def test_daemon_stops_reading_an_agent_that_reads_nothing(host: QrexecHost) -> None:
    """An agent that floods refusable requests and never reads: the daemon stops reading it
    (its own queue stays bounded), then answers every request in order once the agent
    reads, and keeps serving."""
    dom, agent = start_attacked_daemon(host, 4)
    count = _flood(agent.sock, raw4(ident=PROBE))
    assert count < 200_000, count
    answer = refused(PROBE)
    _assert_answers(agent.recv(len(answer) * count), answer, count)
    assert_alive_and_refusing((dom, agent), 4)


def test_daemon_reads_no_client_while_the_control_channel_is_full(host: QrexecHost) -> None:
    dom, agent = start_attacked_daemon(host, 4)
    count = _flood(agent.sock, raw4(ident=PROBE))
    client = RawClient(host, dom.name)
    client.hello()
    client.request(MsgType.EXEC_CMDLINE, dom.domid, 0, b"root:true\0")
    # no port is allocated for the client while its request cannot be passed on
    client.sock.settimeout(1.0)
    try:
        early = client.sock.recv(1)
    except TimeoutError:
        early = b""
    finally:
        client.sock.settimeout(10.0)
    assert early == b""
    answer = refused(PROBE)
    _assert_answers(agent.recv(len(answer) * count), answer, count)
    t, domid, port = client.reply()
    assert (t, domid) == (MsgType.EXEC_CMDLINE, dom.domid)
    mt, payload = agent.recv_message()
    assert mt == MsgType.EXEC_CMDLINE
    assert payload[:8] == struct.pack("<II", dom.domid, port)
    assert payload[8:] == b"root:true\0"


# -- agent -----------------------------------------------------------------------------------
def _trigger_request(name_len: int) -> bytes:
    """What qrexec-client-vm writes to the trigger socket: TRIGGER_SERVICE4, a long name."""
    body = struct.pack("<64s64s", b"", b"tgt") + b"".ljust(32, b"\0")
    body += b"test.Long+" + b"a" * (name_len - 11) + b"\0"
    return HEADER.pack(MsgType.TRIGGER_SERVICE4, len(body)) + body


def test_agent_stops_reading_triggers_while_the_control_channel_is_full(
    host: QrexecHost,
) -> None:
    """A daemon that reads nothing: the agent stops taking trigger requests, and takes the
    waiting ones once the daemon reads again."""
    dom = host.domain("vm", 5)
    dom.start_agent()
    path = host.vchan_dir / f"vchan.{dom.domid}.0.512.sock"
    wait_for(path.exists, 20, "agent's control vchan")
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    daemon.settimeout(10)
    daemon.connect(str(path))
    t, n = HEADER.unpack(recv_exact(daemon, 8))
    assert (t, n) == (MsgType.HELLO, 4)
    recv_exact(daemon, 4)
    daemon.sendall(hello(4))
    wait_for(lambda: os.path.exists(dom.agent_socket), 20, "trigger socket")

    request = _trigger_request(60_000)
    callers: list[socket.socket] = []
    try:
        stalled: socket.socket | None = None
        for _ in range(400):
            caller = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            caller.settimeout(10)
            caller.connect(dom.agent_socket)
            caller.sendall(request)
            callers.append(caller)
            time.sleep(0.02)
            deadline = time.monotonic() + 0.5
            while _unread(caller) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _unread(caller):
                stalled = caller
                break
        assert stalled is not None, "the agent read every request although nobody read it"
        time.sleep(0.5)
        assert _unread(stalled) >= len(request)
        # the daemon reads: every request arrives, the waiting one included
        seen = 0
        while seen < len(callers):
            t, n = HEADER.unpack(recv_exact(daemon, 8))
            body = recv_exact(daemon, n)
            assert t == MsgType.TRIGGER_SERVICE4, hex(t)
            assert body.endswith(b"a" * 100 + b"\0")
            seen += 1
        assert _unread(stalled) == 0
    finally:
        for caller in callers:
            caller.close()
        daemon.close()
