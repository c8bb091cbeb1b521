"""Incremental reader of `msg_header` + payload messages (docs/reference/protocol.md#header).

`MessageReader` owns no I/O: the caller passes received bytes to `receive_data()`, signals
end of stream with `receive_eof()` and takes complete messages from `next_message()`. Each
header is shown to a check callback as soon as its 8 bytes are in, before any payload byte
is buffered, so a peer cannot make the reader hold more than the check allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import Enum
from typing import NamedTuple

from .constants import HEADER_SIZE
from .errors import LocalProtocolError, RemoteProtocolError
from .messages import HEADER

__all__ = [
    "Message",
    "Signal",
    "NEED_DATA",
    "END_OF_STREAM",
    "HeaderCheck",
    "max_payload",
    "MessageReader",
]

#: looks at (type, len) of a header and raises RemoteProtocolError to refuse it
HeaderCheck = Callable[[int, int], None]

#: compact the buffer once this many consumed bytes sit at its front
_COMPACT_AT = 65536


class Message(NamedTuple):
    """A complete message: its type and its payload (header removed)."""

    msgtype: int
    payload: bytes


class Signal(Enum):
    """What `next_message` returns when it has no message."""

    #: the buffer holds no complete message yet; feed more bytes
    NEED_DATA = "NEED_DATA"
    #: EOF was received at a message boundary: the stream ended cleanly
    END_OF_STREAM = "END_OF_STREAM"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = Signal.NEED_DATA
END_OF_STREAM = Signal.END_OF_STREAM


def max_payload(limit: int) -> HeaderCheck:
    """A check that accepts any type with `len` <= `limit`."""

    def check(msgtype: int, length: int) -> None:
        if length > limit:
            raise RemoteProtocolError(
                f"message type {msgtype:#x} with length {length} exceeds {limit}"
            )

    return check


class MessageReader:
    """Splits a byte stream into messages.

    `check_header` is a public attribute: a channel that changes rules (HELLO first, then
    version-dependent checks) replaces it between messages. Once a check or a short read
    has raised RemoteProtocolError, every later `next_message` raises it again.
    """

    def __init__(self, check_header: HeaderCheck) -> None:
        self.check_header = check_header
        self._buf = bytearray()
        self._pos = 0
        self._header: tuple[int, int] | None = None
        self._eof = False
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Received bytes not yet returned in a message (a checked header included)."""
        pending = HEADER_SIZE if self._header is not None else 0
        return len(self._buf) - self._pos + pending

    @property
    def eof(self) -> bool:
        return self._eof

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise LocalProtocolError("data received after EOF")
        if not data:
            raise LocalProtocolError("empty data: signal end of stream with receive_eof()")
        self._buf += data

    def receive_eof(self) -> None:
        self._eof = True

    def next_message(self) -> Message | Signal:
        """The next complete message, NEED_DATA, or END_OF_STREAM."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as err:
            self._error = err
            raise

    def __iter__(self) -> Iterator[Message]:
        """Every complete message now available (stops at NEED_DATA or END_OF_STREAM)."""
        while isinstance(message := self.next_message(), Message):
            yield message

    def _next(self) -> Message | Signal:
        available = len(self._buf) - self._pos
        if self._header is None:
            if available < HEADER_SIZE:
                return self._short(available)
            msgtype, length = HEADER.unpack_from(self._buf, self._pos)
            self._pos += HEADER_SIZE
            available -= HEADER_SIZE
            self.check_header(msgtype, length)
            self._header = (msgtype, length)
        msgtype, length = self._header
        if available < length:
            return self._short(available + HEADER_SIZE)
        payload = bytes(self._buf[self._pos : self._pos + length])
        self._pos += length
        self._header = None
        self._compact()
        return Message(msgtype, payload)

    def _short(self, pending: int) -> Signal:
        if not self._eof:
            return NEED_DATA
        if pending:
            raise RemoteProtocolError(f"short read: EOF inside a message ({pending} bytes in)")
        return END_OF_STREAM

    def _compact(self) -> None:
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos >= _COMPACT_AT:
            del self._buf[: self._pos]
            self._pos = 0
