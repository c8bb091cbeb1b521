"""The client side of the dom0 client <-> daemon socket
(docs/reference/protocol.md#client-socket)."""

from __future__ import annotations

import errno
import os
import socket

from ..protocol.constants import CLIENT_PROTOCOL_VERSION
from ..protocol.errors import RemoteProtocolError
from ..protocol.handshake import check_client_hello
from ..protocol.wire import HEADER, hello, pack_exec, parse_exec_params_only, parse_hello

__all__ = ["DaemonNotRunning", "connect_daemon", "request", "recv_exact"]


class DaemonNotRunning(OSError):
    pass


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"short read ({len(data)} of {n} bytes)")
        data += chunk
    return bytes(data)


def connect_daemon(socket_dir: str, domain: str) -> socket.socket:
    """Connect `qrexec.<domain>` and do the HELLO exchange."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.path.join(socket_dir, f"qrexec.{domain}"))
    except OSError as err:
        sock.close()
        if err.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise DaemonNotRunning(err.errno, f"qrexec daemon for {domain} not running") from err
        raise
    try:
        head = recv_exact(sock, 12)
        t, _n = HEADER.unpack_from(head)
        check_client_hello(parse_hello(t, head[8:]))
        sock.sendall(hello(CLIENT_PROTOCOL_VERSION))
    except BaseException:
        sock.close()
        raise
    return sock


def request(
    sock: socket.socket, msgtype: int, domain: int, port: int, payload: bytes
) -> tuple[int, int] | None:
    """Send one request; with port 0 read the daemon's (domid, port) answer."""
    sock.sendall(pack_exec(msgtype, domain, port, payload))
    if port != 0:
        return None
    head = recv_exact(sock, 16)
    t, n = HEADER.unpack_from(head)
    if t != msgtype or n != 8:
        raise RemoteProtocolError(f"unexpected daemon answer type {t:#x} len {n}")
    return parse_exec_params_only(head[8:])

