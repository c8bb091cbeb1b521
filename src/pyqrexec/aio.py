"""Small asyncio helpers shared by the daemon and the agent."""

from __future__ import annotations

import asyncio
import socket

__all__ = ["recv_exact", "ChannelWriter"]


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
