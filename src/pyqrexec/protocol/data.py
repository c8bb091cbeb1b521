"""Data-channel rules for both ends of a call (docs/reference/protocol.md#data-channel).

The relays move payload bytes themselves (straight between sockets and buffers, without
copying them through this module); for every received header they ask the stream object
what the message means. The answer depends on the role, the negotiated chunk limit and what
was already seen, which is all the state kept here.
"""

from __future__ import annotations

from .constants import MsgType, chunk_limit
from .errors import RemoteProtocolError
from .framing import MessageReader, Signal, max_payload
from .handshake import check_hello_header, negotiate_data
from .sentinels import Sentinel
from .wire import parse_exit_code, parse_hello

#: on the clients' start-up path: no `typing` or `collections` at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import ClassVar

__all__ = ["Action", "CallerStream", "ServiceStream", "DataChannel", "CallerOrder",
           "ServiceOrder", "RECV_CAPACITY"]

#: one read from the channel takes up to this much (many 64 KiB messages)
RECV_CAPACITY = 1 << 20


class Action(Sentinel):
    """What a relay must do with a received message."""

    #: write the payload to local output (caller: stdout; service: service stdin)
    OUTPUT: ClassVar[Action]
    #: end local output (caller: close stdout; service: shut down service stdin)
    OUTPUT_EOF: ClassVar[Action]
    #: caller: payload goes to local stderr
    ERROR: ClassVar[Action]
    #: caller: stderr stream ended (nothing to do locally)
    ERROR_EOF: ClassVar[Action]
    #: caller: payload holds the exit status
    EXIT: ClassVar[Action]
    #: read the payload and drop it
    DISCARD: ClassVar[Action]
    #: the channel is broken: end the call
    BROKEN: ClassVar[Action]


Action.OUTPUT = Action("OUTPUT")
Action.OUTPUT_EOF = Action("OUTPUT_EOF")
Action.ERROR = Action("ERROR")
Action.ERROR_EOF = Action("ERROR_EOF")
Action.EXIT = Action("EXIT")
Action.DISCARD = Action("DISCARD")
Action.BROKEN = Action("BROKEN")


class _Stream:
    def __init__(self, version: int) -> None:
        self.version = version
        self.limit = chunk_limit(version)
        #: one-line warnings the relay should log (drained by the relay)
        self.warnings: list[str] = []
        self._warned = False

    def _warn_once(self, text: str) -> None:
        if not self._warned:
            self._warned = True
            self.warnings.append(text)


class CallerStream(_Stream):
    """The caller's view: it sends STDIN, receives STDOUT, STDERR and EXIT_CODE."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.output_closed = False
        self.exit_seen = False

    def close_output(self) -> None:
        """The local output went away: later STDOUT data is read and discarded."""
        self.output_closed = True

    def receive(self, msgtype: int, length: int) -> Action:
        if length > self.limit:
            return Action.BROKEN
        if msgtype == MsgType.DATA_STDIN:
            self._warn_once("service sent MSG_DATA_STDIN")
            msgtype = MsgType.DATA_STDOUT
        if msgtype == MsgType.DATA_STDOUT:
            if self.output_closed:
                return Action.DISCARD
            if length == 0:
                self.output_closed = True
                return Action.OUTPUT_EOF
            return Action.OUTPUT
        if msgtype == MsgType.DATA_STDERR:
            return Action.ERROR if length else Action.ERROR_EOF
        if msgtype == MsgType.DATA_EXIT_CODE:
            self.exit_seen = True
            return Action.EXIT
        return Action.BROKEN


class ServiceStream(_Stream):
    """The service side's view: it receives STDIN and sends STDOUT, STDERR, EXIT_CODE."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.input_closed = False

    def close_input(self) -> None:
        """The service's stdin is gone: later STDIN data is read and discarded."""
        self.input_closed = True

    def receive(self, msgtype: int, length: int) -> Action:
        if length > self.limit:
            return Action.BROKEN
        if msgtype == MsgType.DATA_STDOUT:
            self._warn_once("client sent MSG_DATA_STDOUT")
            msgtype = MsgType.DATA_STDIN
        if msgtype == MsgType.DATA_STDIN:
            if self.input_closed:
                return Action.DISCARD
            if length == 0:
                self.input_closed = True
                return Action.OUTPUT_EOF
            return Action.OUTPUT
        if msgtype in (MsgType.DATA_STDERR, MsgType.DATA_EXIT_CODE):
            self.warnings.append(f"unexpected message {msgtype:#x} from the caller ignored")
            return Action.DISCARD
        return Action.BROKEN


class DataChannel:
    """What one end of a call reads from its data channel (Data channel): the peer's HELLO, then
    messages whose meaning `stream` (the role's rules, made at the negotiated version) says.

    Bytes are received into `free_space()` and payloads come out of `actions()` as views
    into the same buffer, valid until the next `free_space()`: the relay writes them out
    without a copy.
    """

    def __init__(self, stream_type: type[CallerStream] | type[ServiceStream], own_version: int,
                 capacity: int = RECV_CAPACITY, buffer: memoryview | None = None) -> None:
        self.stream_type = stream_type
        self.own_version = own_version
        #: the negotiated version, 0 until the peer's HELLO
        self.version = 0
        self.limit = 0
        self.stream: CallerStream | ServiceStream | None = None
        self.reader = MessageReader(check_hello_header, capacity, buffer)

    def free_space(self) -> memoryview:
        return self.reader.free_space()

    def received(self, n: int) -> None:
        self.reader.received(n)

    def use_buffer(self, buffer: memoryview) -> None:
        self.reader.use_buffer(buffer)

    def actions(self) -> Iterator[tuple[Action, memoryview]]:
        """What each complete message means, in order. A message that breaks the channel's
        rules raises RemoteProtocolError once the messages before it have been taken."""
        while not isinstance(found := self.reader.next_view(), Signal):
            msgtype, payload = found
            if self.stream is None:
                self._hello(msgtype, bytes(payload))
                continue
            action = self.stream.receive(msgtype, len(payload))
            if action is Action.BROKEN:
                raise RemoteProtocolError(f"message {msgtype:#x} of {len(payload)} bytes")
            yield action, payload

    def _hello(self, msgtype: int, payload: bytes) -> None:
        self.version = negotiate_data(parse_hello(msgtype, payload), self.own_version)
        self.stream = self.stream_type(self.version)
        self.limit = self.stream.limit
        self.reader.check_header = max_payload(self.limit)

    def take_warnings(self) -> list[str]:
        if self.stream is None:
            return []
        warnings, self.stream.warnings = self.stream.warnings, []
        return warnings


class CallerOrder:
    """The caller's end-of-call ordering (End of a call): its STDIN EOF goes out once, at the
    end of its input or right after the service's EXIT_CODE, whichever comes first."""

    def __init__(self, has_input: bool, prefix: bytes = b"") -> None:
        self.has_input = has_input
        self.prefix = prefix
        self.stdin_eof_sent = False
        #: the service's status, None until its EXIT_CODE
        self.status: int | None = None

    @property
    def exit_seen(self) -> bool:
        return self.status is not None

    def opening(self, limit: int) -> list[bytes]:
        """STDIN payloads to send once the version is known: the prefix data in chunks of
        `limit`, then the EOF if there is no local input to follow it (even when an
        EXIT_CODE that came with the HELLO had that EOF sent already, as before)."""
        out = [self.prefix[i : i + limit] for i in range(0, len(self.prefix), limit)]
        self.prefix = b""
        if not self.has_input:
            out.append(b"")
            self.stdin_eof_sent = True
        return out

    def input_ended(self) -> None:
        """The local input's EOF was queued."""
        self.stdin_eof_sent = True

    def exit_code(self, payload: bytes) -> None:
        """EXIT_CODE arrived (the last one counts); prefix data not sent yet never will be."""
        self.status = parse_exit_code(payload)
        self.prefix = b""

    def eof_after_exit(self) -> bool:
        """After EXIT_CODE (and the other messages that came with it): True once, when the
        STDIN EOF has not gone out yet. Queued input is useless now; the EOF goes out right
        after the message being sent (step 3)."""
        if not self.exit_seen or self.stdin_eof_sent:
            return False
        self.stdin_eof_sent = True
        return True


class ServiceOrder:
    """The service side's end-of-call ordering (End of a call): a STDERR EOF at once when
    there is no stderr, EXIT_CODE last, after every output stream's EOF and the exit."""

    def __init__(self, has_stderr: bool) -> None:
        self.has_stderr = has_stderr
        self.stderr_eof_sent = False
        #: the caller's STDIN EOF arrived
        self.client_eof = False

    def opening(self) -> list[int]:
        """Empty messages to send once the version is known."""
        if self.has_stderr or self.stderr_eof_sent:
            return []
        self.stderr_eof_sent = True
        return [MsgType.DATA_STDERR]

    @staticmethod
    def exit_code_due(outputs_ended: bool, exited: bool) -> bool:
        """Whether EXIT_CODE goes out now: the service's output streams all ended (their
        EOFs queued before it) and it exited."""
        return outputs_ended and exited
