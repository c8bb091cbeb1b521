"""Data-channel rules for both ends of a call (docs/reference/protocol.md#data-channel).

The relays move payload bytes themselves (straight between sockets and buffers, without
copying them through this module); for every received header they ask the stream object
what the message means. The answer depends on the role, the negotiated chunk limit and what
was already seen, which is all the state kept here.
"""

from __future__ import annotations

from enum import Enum, auto

from .constants import MsgType, chunk_limit

__all__ = ["Action", "CallerStream", "ServiceStream"]


class Action(Enum):
    """What a relay must do with a received message."""

    #: write the payload to local output (caller: stdout; service: service stdin)
    OUTPUT = auto()
    #: end local output (caller: close stdout; service: shut down service stdin)
    OUTPUT_EOF = auto()
    #: caller: payload goes to local stderr
    ERROR = auto()
    #: caller: stderr stream ended (nothing to do locally)
    ERROR_EOF = auto()
    #: caller: payload holds the exit status
    EXIT = auto()
    #: read the payload and drop it
    DISCARD = auto()
    #: the channel is broken: end the call
    BROKEN = auto()


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
