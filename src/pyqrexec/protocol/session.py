"""What every channel object shares, and the client's end of a daemon's socket
(docs/reference/protocol.md#client-socket): the daemon's HELLO, then the (domain, port)
answer to a request with port 0.

Apart from `channel` because it is the one channel `qrexec-client` reads before its data
channel: a call's start imports this module and not the rules of every other channel
(docs/architecture.md#code-shape). `channel` re-exports all of it.
"""

from __future__ import annotations

from .errors import LocalProtocolError, RemoteProtocolError
from .framing import Message, MessageReader, Signal
from .handshake import check_client_hello, check_hello_header
from .records import record
from .sentinels import Sentinel
from .wire import parse_exec_params_only, parse_hello

#: on the clients' start-up path: no `typing` at run time (mypy takes it as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

    from .channel import Event
    from .framing import HeaderCheck

__all__ = ["Hello", "PortAnswer", "ChannelBase", "Step", "refuse_all", "DaemonSession"]


@record
class Hello:
    """The peer's HELLO arrived: the version the channel runs at from now on."""

    version: int
    #: what the peer announced
    peer: int


@record
class PortAnswer:
    """Daemon -> client: where the data channel of a request with port 0 goes."""

    domain: int
    port: int


class ChannelBase:
    """A message reader plus the rules of the message it expects next."""

    def __init__(self, check: HeaderCheck) -> None:
        self.reader = MessageReader(check)

    @property
    def wanted(self) -> int:
        return self.reader.wanted

    @property
    def buffered(self) -> int:
        """Bytes of a message begun and not complete (0: at a message boundary)."""
        return self.reader.buffered

    def receive_data(self, data: bytes) -> None:
        self.reader.receive_data(data)

    def receive_eof(self) -> None:
        self.reader.receive_eof()

    def next_event(self) -> Event | Signal:
        message = self.reader.next_message()
        if isinstance(message, Signal):
            return message
        return self._handle(message)

    def _handle(self, message: Message) -> Event:
        raise NotImplementedError


class Step(Sentinel):
    HELLO: ClassVar[Step]
    REQUEST: ClassVar[Step]
    RUNNING: ClassVar[Step]
    ANSWER: ClassVar[Step]
    DONE: ClassVar[Step]


Step.HELLO = Step("HELLO")
Step.REQUEST = Step("REQUEST")
Step.RUNNING = Step("RUNNING")
Step.ANSWER = Step("ANSWER")
Step.DONE = Step("DONE")


def refuse_all(msgtype: int, length: int) -> None:
    raise RemoteProtocolError(f"message {msgtype:#x} where none may come")


class DaemonSession(ChannelBase):
    """A client's end of a connection to a daemon's socket (Client socket): the daemon's
    HELLO, then,
    after a request with port 0 (`expect_answer`), the (domain, port) answer."""

    def __init__(self) -> None:
        super().__init__(check_hello_header)
        self.step = Step.HELLO
        self._answer_type = 0

    @classmethod
    def answer_to(cls, msgtype: int) -> DaemonSession:
        """A session past its HELLO waiting for the answer to a `msgtype` request."""
        session = cls()
        session.step = Step.REQUEST
        session.expect_answer(msgtype)
        return session

    def expect_answer(self, msgtype: int) -> None:
        """A request of `msgtype` with port 0 went out: its answer comes next."""
        if self.step is not Step.REQUEST:
            raise LocalProtocolError(f"no request can be answered in state {self.step}")
        self._answer_type = msgtype
        self.step = Step.ANSWER
        self.reader.check_header = self._check_answer

    def _check_answer(self, msgtype: int, length: int) -> None:
        if msgtype != self._answer_type or length != 8:
            raise RemoteProtocolError(f"unexpected daemon answer type {msgtype:#x} len {length}")

    def _handle(self, message: Message) -> Hello | PortAnswer:
        if self.step is Step.HELLO:
            peer = parse_hello(message.msgtype, message.payload)
            self.step = Step.REQUEST
            self.reader.check_header = refuse_all
            return Hello(check_client_hello(peer), peer)
        self.step = Step.DONE
        return PortAnswer(*parse_exec_params_only(message.payload))
