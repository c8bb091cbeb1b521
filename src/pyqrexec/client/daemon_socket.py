"""The client side of the dom0 client <-> daemon socket
(docs/reference/protocol.md#client-socket)."""

from __future__ import annotations

import errno
import os

from ..protocol.constants import CLIENT_PROTOCOL_VERSION
from ..protocol.framing import NEED_DATA
from ..protocol.session import DaemonSession, Hello, PortAnswer
from ..protocol.wire import hello, pack_exec
from ..transport import sockets
from ..transport.feed import read_message

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

__all__ = ["DaemonNotRunning", "connect_daemon", "connect_daemon_async", "request",
           "request_async"]


class DaemonNotRunning(OSError):
    pass


def _not_running(err: OSError, domain: str) -> OSError:
    """The error to raise for a failed connect to DOMAIN's daemon."""
    if err.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return DaemonNotRunning(err.errno, f"qrexec daemon for {domain} not running")
    return err


def connect_daemon(socket_dir: str, domain: str,
                   timeout: float | None = None) -> socket.socket:
    """Connect `qrexec.<domain>` and do the HELLO exchange, that within `timeout` seconds
    (a full listen backlog is waited out in `connect`, as the kernel does)."""
    sock = sockets.unix_stream()
    try:
        sock.connect(os.path.join(socket_dir, f"qrexec.{domain}"))
    except OSError as err:
        sock.close()
        raise _not_running(err, domain) from err
    try:
        if timeout is not None:
            sock.settimeout(timeout)
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



async def connect_daemon_async(socket_dir: str, domain: str) -> socket.socket:
    """`connect_daemon` for asyncio programs; the socket returned is non-blocking.

    A full listen backlog is waited out (a busy daemon), a missing daemon is not."""
    import asyncio

    from ..transport.feed import read_message_async
    from ..transport.unixsock import Backoff, try_connect

    loop = asyncio.get_running_loop()
    path = os.path.join(socket_dir, f"qrexec.{domain}")
    backoff = Backoff(0.001, 0.05)
    while True:
        try:
            sock = try_connect(path, wait_for_listener=False)
        except OSError as err:
            raise _not_running(err, domain) from err
        if sock is not None:
            break
        await asyncio.sleep(backoff.next() or 0.05)
    try:
        if not isinstance(await read_message_async(loop, sock, DaemonSession(), NEED_DATA),
                          Hello):
            raise EOFError("the daemon closed the connection before its HELLO")
        await loop.sock_sendall(sock, hello(CLIENT_PROTOCOL_VERSION))
    except BaseException:
        sock.close()
        raise
    return sock


async def request_async(sock: socket.socket, msgtype: int, payload: bytes) -> tuple[int, int]:
    """`request` with port 0 for asyncio programs: the daemon's (domid, port) answer."""
    import asyncio

    from ..transport.feed import read_message_async

    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, pack_exec(msgtype, 0, 0, payload))
    answer = await read_message_async(loop, sock, DaemonSession.answer_to(msgtype), NEED_DATA)
    if not isinstance(answer, PortAnswer):
        raise EOFError("the daemon closed the connection without an answer")
    return answer.domain, answer.port
