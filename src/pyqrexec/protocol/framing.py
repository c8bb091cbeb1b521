"""Incremental reader of `msg_header` + payload messages (docs/reference/protocol.md#header).

`MessageReader` owns no I/O: the caller passes received bytes to `receive_data()`, signals
end of stream with `receive_eof()` and takes complete messages from `next_message()`. Each
header is shown to a check callback as soon as its 8 bytes are in, before any payload byte
is buffered, so a peer cannot make the reader hold more than the check allows.
"""

from __future__ import annotations

from .constants import HEADER_SIZE
from .errors import LocalProtocolError, RemoteProtocolError
from .records import record
from .sentinels import Sentinel
from .wire import HEADER

#: on the clients' start-up path: `collections.abc` at run time would load `collections`
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    #: looks at (type, len) of a header and raises RemoteProtocolError to refuse it
    HeaderCheck = Callable[[int, int], None]

__all__ = [
    "Message",
    "Signal",
    "NEED_DATA",
    "END_OF_STREAM",
    "max_payload",
    "MessageReader",
]

#: compact the buffer once this many consumed bytes sit at its front
_COMPACT_AT = 65536


@record
class Message:
    """A complete message: its type and its payload (header removed)."""

    msgtype: int
    payload: bytes


class Signal(Sentinel):
    """What `next_message` returns when it has no message."""


#: the buffer holds no complete message yet; feed more bytes
NEED_DATA = Signal("NEED_DATA")
#: EOF was received at a message boundary: the stream ended cleanly
END_OF_STREAM = Signal("END_OF_STREAM")


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

    Two ways to feed it and take messages out:

    - `receive_data()` and `next_message()`: bytes in, copies out (control channels).
      `wanted` says how many bytes complete the next header or message, so a program can
      read no further than the message it expects (a socket handed on afterwards keeps the
      rest unread).
    - with a fixed `capacity`: `free_space()` is a view to receive into, `received(n)`
      counts what arrived, and `next_view()` returns payloads as views into the buffer
      (the data path: no copies). A view stays valid until the next `free_space()`.
      The program may hand in that `buffer` itself (a view of memory it mapped, whose
      pages cost nothing until bytes arrive in them); else it is a zeroed bytearray.
    """

    def __init__(self, check_header: HeaderCheck, capacity: int | None = None,
                 buffer: memoryview | None = None) -> None:
        self.check_header = check_header
        if buffer is None and capacity is not None:
            buffer = memoryview(bytearray(capacity))
        #: the fixed-capacity buffer; None: `_buf` grows with what is received
        self._view = buffer
        self._buf = bytearray()
        #: what messages are read out of: the fixed view, or the growing bytearray itself
        self._mem: bytearray | memoryview = self._buf if buffer is None else buffer
        #: unread bytes are `_mem[_pos:_end]`
        self._pos = 0
        self._end = 0
        self._header: tuple[int, int] | None = None
        self._eof = False
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Received bytes not yet returned in a message (a checked header included)."""
        pending = HEADER_SIZE if self._header is not None else 0
        return self._end - self._pos + pending

    @property
    def wanted(self) -> int:
        """Bytes still missing from the next header (none checked yet) or payload."""
        available = self._end - self._pos
        if self._header is None:
            return max(HEADER_SIZE - available, 0)
        return max(self._header[1] - available, 0)

    @property
    def eof(self) -> bool:
        return self._eof

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise LocalProtocolError("data received after EOF")
        if not data:
            raise LocalProtocolError("empty data: signal end of stream with receive_eof()")
        if self._view is not None:
            n = len(data)
            self.free_space()[:n] = data
            self.received(n)
            return
        self._buf += data
        self._end = len(self._buf)

    def receive_eof(self) -> None:
        self._eof = True

    def free_space(self) -> memoryview:
        """Fixed capacity only: where the next bytes go (unread bytes moved to the front
        first, which ends the validity of views handed out before)."""
        assert self._view is not None, "free_space() needs a fixed capacity"
        if self._pos:
            left = self._end - self._pos
            if left:
                self._view[:left] = self._view[self._pos : self._end]
            self._pos, self._end = 0, left
        return self._view[self._end :]

    def use_buffer(self, buffer: memoryview) -> None:
        """Fixed capacity only: receive into `buffer` from now on (a larger one, say, once
        the first filled up); the unread bytes move along. Views handed out before keep
        the old buffer's memory, valid until the next `free_space()` as always."""
        assert self._view is not None, "use_buffer() needs a fixed capacity"
        left = self._end - self._pos
        buffer[:left] = self._view[self._pos : self._end]
        self._view = self._mem = buffer
        self._pos, self._end = 0, left

    def received(self, n: int) -> None:
        """`n` bytes were written at the start of `free_space()`."""
        if self._eof:
            raise LocalProtocolError("data received after EOF")
        self._end += n

    def next_message(self) -> Message | Signal:
        """The next complete message, NEED_DATA, or END_OF_STREAM."""
        found = self._locate()
        if isinstance(found, Signal):
            return found
        msgtype, start, end = found
        payload = bytes(self._mem[start:end])
        self._compact()
        return Message(msgtype, payload)

    def next_view(self) -> tuple[int, memoryview] | Signal:
        """Fixed capacity only: `next_message` with the payload as a view into the buffer."""
        assert self._view is not None, "next_view() needs a fixed capacity"
        found = self._locate()
        if isinstance(found, Signal):
            return found
        msgtype, start, end = found
        return msgtype, self._view[start:end]

    def __iter__(self) -> Iterator[Message]:
        """Every complete message now available (stops at NEED_DATA or END_OF_STREAM)."""
        while isinstance(message := self.next_message(), Message):
            yield message

    def _locate(self) -> tuple[int, int, int] | Signal:
        """(type, payload start, payload end) of the next complete message, consumed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as err:
            self._error = err
            raise

    def _next(self) -> tuple[int, int, int] | Signal:
        available = self._end - self._pos
        if self._header is None:
            if available < HEADER_SIZE:
                return self._short(available)
            msgtype, length = HEADER.unpack_from(self._mem, self._pos)
            self._pos += HEADER_SIZE
            available -= HEADER_SIZE
            self.check_header(msgtype, length)
            self._header = (msgtype, length)
        msgtype, length = self._header
        if available < length:
            return self._short(available + HEADER_SIZE)
        start = self._pos
        self._pos += length
        self._header = None
        return msgtype, start, self._pos

    def _short(self, pending: int) -> Signal:
        if not self._eof:
            return NEED_DATA
        if pending:
            raise RemoteProtocolError(f"short read: EOF inside a message ({pending} bytes in)")
        return END_OF_STREAM

    def _compact(self) -> None:
        if self._view is not None:
            return
        if self._pos == self._end:
            self._buf.clear()
            self._pos = self._end = 0
        elif self._pos >= _COMPACT_AT:
            del self._buf[: self._pos]
            self._end -= self._pos
            self._pos = 0
