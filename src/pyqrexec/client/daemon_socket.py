"""The client side of the dom0 client <-> daemon socket
(docs/reference/protocol.md#client-socket)."""

from __future__ import annotations

import errno
import os

from ..protocol.constants import CLIENT_PROTOCOL_VERSION
from ..protocol.wire import hello, pack_exec
from ..transport import sockets

# The readers (`session`, `framing`, `feed`) are imported where they are used: a client sends
# its request (`send_request`) before it loads them, so that loading them overlaps the
# daemon's, the agent's and the handler's work on the call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

    from ..protocol.session import DaemonSession

__all__ = ["DaemonNotRunning", "connect_daemon", "request", "send_request", "read_hello",
           "read_answer", "send_request_async", "read_hello_async", "read_answer_async"]


class DaemonNotRunning(OSError):
    pass


def _not_running(err: OSError, domain: str) -> OSError:
    """The error to raise for a failed connect to DOMAIN's daemon."""
    if err.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return DaemonNotRunning(err.errno, f"qrexec daemon for {domain} not running")
    return err


def _connect(socket_dir: str, domain: str) -> socket.socket:
    sock = sockets.unix_stream()
    try:
        sock.connect(os.path.join(socket_dir, f"qrexec.{domain}"))
    except OSError as err:
        sock.close()
        raise _not_running(err, domain) from err
    return sock


def connect_daemon(socket_dir: str, domain: str,
                   timeout: float | None = None) -> socket.socket:
    """Connect `qrexec.<domain>` and do the HELLO exchange, that within `timeout` seconds
    (a full listen backlog is waited out in `connect`, as the kernel does)."""
    sock = _connect(socket_dir, domain)
    try:
        if timeout is not None:
            sock.settimeout(timeout)
        read_hello(sock)
        sock.sendall(hello(CLIENT_PROTOCOL_VERSION))
    except BaseException:
        sock.close()
        raise
    return sock


def request(
    sock: socket.socket, msgtype: int, domain: int, port: int, payload: bytes
) -> tuple[int, int] | None:
    """Send one request; with port 0 read the daemon's (domid, port) answer."""
    from ..protocol.session import DaemonSession

    sock.sendall(pack_exec(msgtype, domain, port, payload))
    if port != 0:
        return None
    return read_answer(sock, DaemonSession.answer_to(msgtype))


def send_request(socket_dir: str, domain: str, msgtype: int, peer: int,
                 payload: bytes) -> socket.socket:
    """Connect `qrexec.<domain>` and send our HELLO and a request with port 0 at once;
    `read_hello` and `read_answer` then read the daemon's side.

    The daemon sends its HELLO first (docs/reference/protocol.md#client-socket), but nothing
    we send depends on it, so we do not wait for it: the bytes on the socket are the same,
    and the daemon reads them after its HELLO as it would have. A client saves the round
    trip and loads the rest of its code while the daemon, the agent and the handler work."""
    sock = _connect(socket_dir, domain)
    try:
        sock.sendall(_opening(msgtype, peer, payload))
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed at once (a daemon with too many clients): read_hello says so
    except BaseException:
        sock.close()
        raise
    return sock


def _opening(msgtype: int, peer: int, payload: bytes) -> bytes:
    """What a client sends at once: its HELLO and a request with port 0."""
    return hello(CLIENT_PROTOCOL_VERSION) + pack_exec(msgtype, peer, 0, payload)


def read_hello(sock: socket.socket, answer_to: int | None = None) -> DaemonSession:
    """Read and check the daemon's HELLO: the session to read the rest with, which expects
    the answer to an `answer_to` request if one went out."""
    from ..protocol.framing import NEED_DATA
    from ..protocol.session import DaemonSession
    from ..transport.feed import read_message

    session = DaemonSession()
    _hello(read_message(sock, session, NEED_DATA))
    if answer_to is not None:
        session.expect_answer(answer_to)
    return session


def read_answer(sock: socket.socket, session: DaemonSession) -> tuple[int, int]:
    """The daemon's (domid, port) answer to the request the session expects one for."""
    from ..protocol.framing import NEED_DATA
    from ..transport.feed import read_message

    return _port(read_message(sock, session, NEED_DATA))


def _hello(event: object) -> None:
    """What the session read first must be the daemon's HELLO (else its end)."""
    from ..protocol.session import Hello

    if not isinstance(event, Hello):
        raise EOFError("the daemon closed the connection before its HELLO")


def _port(event: object) -> tuple[int, int]:
    """The (domid, port) of the daemon's answer, which the session read next (else its end)."""
    from ..protocol.session import PortAnswer

    if not isinstance(event, PortAnswer):
        raise EOFError("the daemon closed the connection without an answer")
    return event.domain, event.port


async def send_request_async(socket_dir: str, domain: str, msgtype: int,
                             payload: bytes) -> socket.socket:
    """`send_request` (port 0, no peer) for asyncio programs; the socket returned is
    non-blocking. A full listen backlog is waited out (a busy daemon), a missing daemon is
    not."""
    import asyncio

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
        await loop.sock_sendall(sock, _opening(msgtype, 0, payload))
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed at once (a daemon with too many clients): read_hello_async says so
    except BaseException:
        sock.close()
        raise
    return sock


async def read_hello_async(sock: socket.socket, answer_to: int) -> DaemonSession:
    """`read_hello` for asyncio programs, after `send_request_async`."""
    import asyncio

    from ..protocol.framing import NEED_DATA
    from ..protocol.session import DaemonSession
    from ..transport.feed import read_message_async

    session = DaemonSession()
    _hello(await read_message_async(asyncio.get_running_loop(), sock, session, NEED_DATA))
    session.expect_answer(answer_to)
    return session


async def read_answer_async(sock: socket.socket, session: DaemonSession) -> tuple[int, int]:
    """`read_answer` for asyncio programs."""
    import asyncio

    from ..protocol.framing import NEED_DATA
    from ..transport.feed import read_message_async

    return _port(await read_message_async(asyncio.get_running_loop(), sock, session,
                                          NEED_DATA))
