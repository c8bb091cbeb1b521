"""Small asyncio helpers shared by the daemon and the agent."""

from __future__ import annotations

import asyncio
import socket

from .transport.unixsock import Backoff, try_connect

__all__ = ["recv_exact", "ChannelWriter", "connect_unix", "open_unix"]


async def recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes from a non-blocking socket; raises EOFError on a short read."""
    parts: list[bytes] = []
    left = n
    while left:
        chunk = await loop.sock_recv(sock, min(left, 1 << 16))
        if not chunk:
            raise EOFError(f"short read: {n - left} of {n} bytes")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class ChannelWriter:
    """Serialises whole messages onto one socket shared by many tasks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self._lock = asyncio.Lock()

    async def send(self, data: bytes) -> None:
        async with self._lock:
            await self.loop.sock_sendall(self.sock, data)


async def connect_unix(path: str) -> socket.socket:
    """A connected non-blocking Unix socket.

    A full listen backlog makes a non-blocking connect fail with EAGAIN (it never completes
    later), so it is retried here; asyncio's own `open_unix_connection` would take the
    unconnected socket for a connected one.
    """
    backoff = Backoff(0.001, 0.05)
    while (sock := try_connect(path, wait_for_listener=False)) is None:
        await asyncio.sleep(backoff.next() or 0.05)
    return sock


async def open_unix(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_unix_connection` that survives a full listen backlog."""
    return await asyncio.open_unix_connection(sock=await connect_unix(path))
