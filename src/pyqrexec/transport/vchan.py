"""vchan over Unix sockets, the convention of upstream's vchan-socket
(docs/reference/protocol.md#transport).

A vchan is addressed by (server domid, client domid, port) and lives at
`<dir>/vchan.<server>.<client>.<port>.sock`. The server accepts exactly one peer; the client
retries while the socket is missing or refusing.

(ext) With pair directories (`pair_dirs`: the program's `VCHAN_PAIR_DIRS` set to a non-empty
value), the socket of a pair lives one level down, in a directory named after the peer's domid:
`<dir>/<peer>/vchan.<server>.<client>.<port>.sock`.
qrexec-host uses this so that a sandboxed domain sees only the sockets of its own pairs (each
pair directory is shared by exactly the two domains of the pair).
"""

from __future__ import annotations

import os
import time

from . import sockets
from .unixsock import Backoff, listen_unix, try_connect, tune

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

__all__ = [
    "vchan_path",
    "pair_path",
    "listen",
    "accept_one",
    "accept_one_async",
    "connect",
    "VchanTimeout",
    "tune",
    "connect_async",
]

#: a connecting side's pause while the listener is not there yet, kept for the first
#: `_RETRY_HOLD` seconds and doubling after that up to the most. The listener usually comes
#: within a millisecond: a client sends its request before it loads the code that listens
#: (docs/architecture.md#a-calls-start), while the agent's call process is quicker to
#: connect; each millisecond a doubling pause overshot was a millisecond of the call's time.
_RETRY_PAUSE_FIRST = 0.0001
_RETRY_HOLD = 0.002
_RETRY_PAUSE_MAX = 0.1


class VchanTimeout(TimeoutError):
    """The peer did not show up in time."""


def vchan_path(directory: str, server: int, client: int, port: int) -> str:
    return os.path.join(directory, f"vchan.{server}.{client}.{port}.sock")


def pair_path(directory: str, server: int, client: int, port: int, own: int,
              pair_dirs: bool) -> str:
    """Where the vchan lives as seen by domain `own` (see `VCHAN_PAIR_DIRS` above)."""
    if not pair_dirs:
        return vchan_path(directory, server, client, port)
    peer = client if server == own else server
    return vchan_path(os.path.join(directory, str(peer)), server, client, port)


def listen(directory: str, own: int, peer: int, port: int, *,
           pair_dirs: bool) -> tuple[socket.socket, str]:
    """Server init: unlink a stale file, bind, listen (backlog 1)."""
    path = pair_path(directory, own, peer, port, own, pair_dirs)
    # The peer may run as another user (a non-root agent); which domain may reach
    # which socket is the host's business (directory layout, sandboxes).
    # in a pair directory, stage the socket in the view above it: that one is the host's
    # (or the domain's own), the pair directory is writable by the peer too
    staging = os.path.dirname(os.path.dirname(path)) if pair_dirs else None
    return listen_unix(path, mode=0o666, backlog=1, staging_dir=staging), path


def _close_listener(listener: socket.socket, path: str) -> None:
    """One peer is all a vchan server takes: the listener and its path go at once."""
    listener.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def accept_one(
    listener: socket.socket, path: str, timeout: float | None = None
) -> socket.socket:
    """Accept the one peer, then close the listener and unlink its path."""
    try:
        listener.settimeout(timeout)
        try:
            conn = sockets.accept(listener)
        except TimeoutError as err:
            raise VchanTimeout(f"no connection on {path} within {timeout} s") from err
    finally:
        _close_listener(listener, path)
    conn.settimeout(None)
    tune(conn)
    return conn


async def accept_one_async(
    listener: socket.socket, path: str, timeout: float | None = None
) -> socket.socket:
    """`accept_one` for asyncio programs: waiting for the peer does not block the loop.
    The returned socket is non-blocking."""
    import asyncio

    try:
        listener.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                conn, _ = await asyncio.get_running_loop().sock_accept(listener)
        except TimeoutError as err:
            raise VchanTimeout(f"no connection on {path} within {timeout} s") from err
    finally:
        _close_listener(listener, path)
    conn.setblocking(False)
    tune(conn)
    return conn


def _attempt(path: str, backoff: Backoff) -> socket.socket | float:
    """One connect attempt: the socket, or the pause before the next (VchanTimeout when
    time is up)."""
    sock = try_connect(path, wait_for_listener=True, follow_symlinks=False)
    if sock is not None:
        return sock
    pause = backoff.next()
    if pause is None:
        raise VchanTimeout(f"cannot connect to {path}")
    return pause


def connect(
    directory: str, server: int, own: int, port: int, timeout: float | None = None,
    *, pair_dirs: bool,
) -> socket.socket:
    """Client init: connect, retrying on ENOENT/ECONNREFUSED until `timeout` (None = forever)."""
    path = pair_path(directory, server, own, port, own, pair_dirs)
    backoff = Backoff(_RETRY_PAUSE_FIRST, _RETRY_PAUSE_MAX, timeout, hold=_RETRY_HOLD)
    while isinstance(sock := _attempt(path, backoff), float):
        time.sleep(sock)
    sock.setblocking(True)
    tune(sock)
    return sock


async def connect_async(
    directory: str, server: int, own: int, port: int, timeout: float | None = None,
    *, pair_dirs: bool,
) -> socket.socket:
    """`connect` for asyncio programs: the retry pauses do not block the loop."""
    import asyncio

    path = pair_path(directory, server, own, port, own, pair_dirs)
    backoff = Backoff(_RETRY_PAUSE_FIRST, _RETRY_PAUSE_MAX, timeout, hold=_RETRY_HOLD)
    while isinstance(sock := _attempt(path, backoff), float):
        await asyncio.sleep(sock)
    tune(sock)
    return sock
