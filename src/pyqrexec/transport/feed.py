"""Feeding a sans-IO message reader from a socket (one of the protocol's `channel` objects).

Each read asks for exactly the bytes the reader still wants for the message it is on, never
more: what follows a message stays in the socket, as it must when the socket is handed on
or watched for EOF afterwards, and a peer's flood is not read ahead of the protocol's checks.
"""

from __future__ import annotations

#: on the clients' start-up path: no `typing` or `asyncio` at run time (mypy takes it as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import socket
    from typing import Protocol, TypeVar

    M = TypeVar("M", covariant=True)

    class Feedable(Protocol[M]):
        """What the functions below need of a reader (`protocol.channel` objects have it)."""

        @property
        def wanted(self) -> int: ...

        def receive_data(self, data: bytes) -> None: ...

        def receive_eof(self) -> None: ...

        def next_event(self) -> M: ...

__all__ = ["read_message", "read_message_nowait", "read_message_async", "read_stream_message"]

#: the most one read asks for (a message's payload may be larger)
_CHUNK = 1 << 16


def _feed(reader: Feedable[object], data: bytes) -> None:
    if data:
        reader.receive_data(data)
    else:
        reader.receive_eof()


def read_message(sock: socket.socket, reader: Feedable[M], need_data: object) -> M:
    """The reader's next message or end-of-stream signal, reading a blocking socket.

    `need_data` is the reader's "feed me" signal. OSError (a timeout included) and the
    reader's RemoteProtocolError pass through; the reader then says how far it got.
    """
    while (message := reader.next_event()) is need_data:
        _feed(reader, sock.recv(min(reader.wanted, _CHUNK)))
    return message


def read_message_nowait(sock: socket.socket, reader: Feedable[M], need_data: object) -> M:
    """`read_message` for a non-blocking socket served from a readiness callback: the
    reader's next message, or `need_data` when the socket holds nothing more for now."""
    while (message := reader.next_event()) is need_data:
        try:
            data = sock.recv(min(reader.wanted, _CHUNK))
        except BlockingIOError:
            return message
        _feed(reader, data)
    return message


async def read_message_async(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                             reader: Feedable[M], need_data: object) -> M:
    """`read_message` for a non-blocking socket in an asyncio program."""
    while (message := reader.next_event()) is need_data:
        _feed(reader, await loop.sock_recv(sock, min(reader.wanted, _CHUNK)))
    return message


async def read_stream_message(stream: asyncio.StreamReader, reader: Feedable[M],
                              need_data: object) -> M:
    """`read_message` for an asyncio stream."""
    while (message := reader.next_event()) is need_data:
        _feed(reader, await stream.read(min(reader.wanted, _CHUNK)))
    return message
