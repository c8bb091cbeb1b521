"""Hostile peers for the real qrexec-daemon: a fake agent on the control vchan and raw
clients on the daemon's Unix socket. Everything is plain blocking sockets with short
timeouts, so a daemon that does not react never hangs a test.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
from pathlib import Path
from typing import Protocol

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import HEADER, hello, pack_exec

from .harness import Domain, QrexecHost, peer_pid, wait_for

#: seconds any single read may take before the test fails
TIMEOUT = 10.0


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes; AssertionError on EOF before that."""
    parts: list[bytes] = []
    left = n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            got = n - left
            raise AssertionError(f"EOF after {got} of {n} bytes: {b''.join(parts)!r}")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_until_eof(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (a timeout fails the test)."""
    parts: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        parts.append(chunk)
    return b"".join(parts)


def nothing_arrives(sock: socket.socket, wait: float = 0.5) -> bool:
    """True when no byte is readable within `wait` seconds (EOF counts as nothing)."""
    old = sock.gettimeout()
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return True
    finally:
        sock.settimeout(old)


def still_open(sock: socket.socket, wait: float = 0.3) -> bool:
    """True when the peer neither sends nor closes within `wait` seconds."""
    old = sock.gettimeout()
    sock.settimeout(wait)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.settimeout(old)
    return False


def refused(ident: bytes) -> bytes:
    """The exact MSG_SERVICE_REFUSED the daemon must send: raw 32 ident bytes."""
    assert len(ident) == 32
    return HEADER.pack(MsgType.SERVICE_REFUSED, 32) + ident


class FakeAgent:
    """The server side of `vchan.<domid>.0.512.sock`: one accepted daemon connection."""

    def __init__(self, host: QrexecHost, domid: int) -> None:
        self.path = host.vchan_dir / f"vchan.{domid}.0.512.sock"
        if self.path.exists():
            self.path.unlink()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT * 2)
        self.conn: socket.socket | None = None

    def accept(self) -> socket.socket:
        """Accept the daemon, then stop listening (a vchan server serves one client)."""
        conn, _ = self.listener.accept()
        self.listener.close()
        self.path.unlink(missing_ok=True)
        conn.settimeout(TIMEOUT)
        self.conn = conn
        return conn

    @property
    def sock(self) -> socket.socket:
        assert self.conn is not None, "daemon not accepted yet"
        return self.conn

    def peer_pid(self) -> int:
        return peer_pid(self.sock)

    def handshake(self, version: int = 4) -> int:
        """Accept, send HELLO(version), return the version of the daemon's HELLO reply."""
        self.accept()
        self.send(hello(version))
        t, n = HEADER.unpack(self.recv(8))
        assert (t, n) == (MsgType.HELLO, 4)
        (reply,) = struct.unpack("<I", self.recv(4))
        return int(reply)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        return recv_exact(self.sock, n)

    def recv_message(self) -> tuple[int, bytes]:
        t, n = HEADER.unpack(self.recv(8))
        return t, self.recv(n)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.listener.close()
        self.path.unlink(missing_ok=True)


def hostile_domain(host: QrexecHost, name: str = "vm", domid: int = 42,
                   user: str = "root") -> Domain:
    """A domain whose daemon is started by the test; no real agent."""
    return host.domain(name, domid, user)


def start_attacked_daemon(host: QrexecHost, version: int = 4, name: str = "vm",
                          domid: int = 42, env: dict[str, str] | None = None,
                          extra: list[str] | None = None) -> tuple[Domain, FakeAgent]:
    """A real daemon (`--direct`) connected to a fake agent that has done HELLO(version)
    and whose client socket exists."""
    dom = hostile_domain(host, name, domid)
    agent = FakeAgent(host, domid)
    dom.start_daemon(wait=False, env=env, extra=extra)
    agent.handshake(version)
    dom.wait_daemon_ready()
    return dom, agent


def wait_exit(dom: Domain, timeout: float = TIMEOUT) -> int:
    assert dom.daemon is not None
    try:
        return dom.daemon.wait(timeout)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"daemon still running: {dom.daemon_log.read_text()}") from err


def wait_log(dom: Domain, text: str, timeout: float = TIMEOUT) -> None:
    wait_for(lambda: text in dom.daemon_log.read_text(), timeout, f"log line {text!r}")


def socket_paths(dom: Domain) -> list[Path]:
    d = dom.host.socket_dir
    return [d / f"qrexec.{dom.domid}", d / f"qrexec.{dom.name}", d / f"qrexec.uuid:{dom.uuid}"]


def terminate(pid: int) -> None:
    """SIGTERM a daemon the test started indirectly (launcher mode)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


class HasSocketDir(Protocol):
    @property
    def socket_dir(self) -> Path: ...


class RawClient:
    """A dom0 client speaking raw bytes to `qrexec.<name>` (protocol.md §9) in the daemon
    socket directory of `host` (a QrexecHost, a qrexec-host world)."""

    def __init__(self, host: HasSocketDir, name: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(str(host.socket_dir / f"qrexec.{name}"))

    def read_hello(self) -> int:
        t, n = HEADER.unpack(recv_exact(self.sock, 8))
        assert (t, n) == (MsgType.HELLO, 4)
        (version,) = struct.unpack("<I", recv_exact(self.sock, 4))
        return int(version)

    def hello(self, version: int = 3) -> None:
        assert self.read_hello() == 3
        self.sock.sendall(hello(version))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, msgtype: int, domain: int, port: int, payload: bytes) -> None:
        self.sock.sendall(pack_exec(msgtype, domain, port, payload))

    def reply(self) -> tuple[int, int, int]:
        """(type, domid, port) of the daemon's answer to a port-0 request."""
        t, n = HEADER.unpack(recv_exact(self.sock, 8))
        assert n == 8
        domid, port = struct.unpack("<II", recv_exact(self.sock, 8))
        return t, domid, port

    def closed(self) -> bool:
        """True when the daemon closes the connection without sending anything more."""
        return read_until_eof(self.sock) == b""

    def close(self) -> None:
        self.sock.close()
