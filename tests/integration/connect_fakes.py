"""Fakes for legacy connect mode (`qrexec-client -c`): a source domain with a pending request,
and the caller end of a data channel spoken by hand.

The source domain is a real qrexec-daemon (`pending_daemon.py`: its worker leaves requests
pending) connected to a fake agent on the control vchan; the fake agent sends the
TRIGGER_SERVICE4 and records what the daemon forwards (SERVICE_CONNECT).
"""

from __future__ import annotations

import socket
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import HEADER, hello, pack_trigger4, parse_exec
from pyqrexec.transport import vchan

from .fake_agent import recv_exact
from .harness import PYTHON, Domain, QrexecHost

TIMEOUT = 20.0
PENDING_DAEMON = str(Path(__file__).with_name("pending_daemon.py"))


class SourceAgent:
    """The agent end of `vchan.<domid>.0.512.sock` for a source domain."""

    def __init__(self, host: QrexecHost, domid: int) -> None:
        self.listener, self.path = vchan.listen(str(host.vchan_dir), domid, 0, 512)
        self.conn: socket.socket | None = None

    def handshake(self) -> None:
        self.conn = vchan.accept_one(self.listener, self.path, TIMEOUT)
        self.conn.settimeout(TIMEOUT)
        self.conn.sendall(hello(4))
        t, n = HEADER.unpack(recv_exact(self.conn, 8))
        assert (t, n) == (MsgType.HELLO, 4)
        recv_exact(self.conn, 4)

    def trigger(self, service: bytes, target: bytes, ident: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(pack_trigger4(service, target, ident))

    def message(self) -> tuple[int, int, int, bytes]:
        """(type, connect_domain, connect_port, payload) of the next exec-style message."""
        assert self.conn is not None
        t, n = HEADER.unpack(recv_exact(self.conn, 8))
        params = parse_exec(recv_exact(self.conn, n))
        return t, params.connect_domain, params.connect_port, params.payload

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


def start_source(host: QrexecHost, name: str, domid: int) -> tuple[Domain, SourceAgent]:
    """A source domain: pending-request daemon + fake agent, daemon socket ready."""
    dom = host.domain(name, domid)
    agent = SourceAgent(host, domid)
    log = open(dom.daemon_log, "ab")  # noqa: SIM115 - handed to the child
    argv = [PYTHON, PENDING_DAEMON, "--direct", f"--uuid={dom.uuid}",
            f"--socket-dir={host.socket_dir}", str(domid), name, dom.user]
    dom.daemon = subprocess.Popen(argv, env=host.env(0), stdout=log, stderr=log,
                                  stdin=subprocess.DEVNULL)
    log.close()
    agent.handshake()
    dom.wait_daemon_ready()
    return dom, agent


@dataclass
class CallerView:
    """What the caller end of a data channel saw."""

    types: list[int] = field(default_factory=list)
    stdout: bytes = b""
    stderr: bytes = b""
    status: int | None = None
    peer_version: int | None = None


def accept_data(host: QrexecHost, own: int, peer: int, port: int,
                timeout: float = TIMEOUT) -> socket.socket:
    listener, path = vchan.listen(str(host.vchan_dir), own, peer, port)
    sock = vchan.accept_one(listener, path, timeout)
    sock.settimeout(timeout)
    return sock


def speak_as_caller(sock: socket.socket, stdin: bytes = b"") -> CallerView:
    """HELLO, stdin and its EOF, then read until EXIT_CODE (or EOF)."""
    view = CallerView()
    data = hello(4)
    if stdin:
        data += HEADER.pack(MsgType.DATA_STDIN, len(stdin)) + stdin
    data += HEADER.pack(MsgType.DATA_STDIN, 0)
    try:
        sock.sendall(data)
    except BrokenPipeError:
        pass  # a service side that started nothing may be gone already; read what it sent
    while True:
        head = sock.recv(8, socket.MSG_WAITALL)
        if len(head) < 8:
            break
        t, n = HEADER.unpack(head)
        payload = recv_exact(sock, n) if n else b""
        if t == MsgType.HELLO:
            (view.peer_version,) = struct.unpack("<I", payload)
            continue
        view.types.append(t)
        if t == MsgType.DATA_STDOUT:
            view.stdout += payload
        elif t == MsgType.DATA_STDERR:
            view.stderr += payload
        elif t == MsgType.DATA_EXIT_CODE:
            (view.status,) = struct.unpack("<i", payload)
            break
    sock.close()
    return view
