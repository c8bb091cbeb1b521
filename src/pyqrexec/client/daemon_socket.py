"""The client side of the dom0 client <-> daemon socket
(docs/reference/protocol.md#client-socket)."""

from __future__ import annotations

import errno
import os
import socket

from ..protocol.channel import NEED_DATA, DaemonSession, Hello, PortAnswer
from ..protocol.constants import CLIENT_PROTOCOL_VERSION
from ..protocol.wire import hello, pack_exec
from ..transport.feed import read_message

__all__ = ["DaemonNotRunning", "connect_daemon", "request"]


class DaemonNotRunning(OSError):
    pass


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
        if not isinstance(read_message(sock, DaemonSession(), NEED_DATA), Hello):
            raise EOFError("the daemon closed the connection before its HELLO")
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
    answer = read_message(sock, DaemonSession.answer_to(msgtype), NEED_DATA)
    if not isinstance(answer, PortAnswer):
        raise EOFError("the daemon closed the connection without an answer")
    return answer.domain, answer.port

