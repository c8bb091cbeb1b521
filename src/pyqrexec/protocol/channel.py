"""One object per end of each `msg_header` channel: what the peer may send, in which order,
and what it means (docs/reference/protocol.md).

Every peer's reads go through these: a program feeds received bytes in (`receive_data`,
`receive_eof`; `wanted` says how many complete the current message) and takes typed events
out of `next_event()`, or NEED_DATA / END_OF_STREAM. A RemoteProtocolError means the peer broke
the channel's rules; what that costs (the connection, the program) is the program's call.
The HELLO exchange is the first state of every channel that has one; the header checks of
`control` and `handshake` police each message before its payload is buffered.
"""

from __future__ import annotations

from .cmdline import replace_default_user
from .constants import MsgType
from .control import (
    Refusal,
    ServiceRequest,
    check_agent_header,
    check_client_header,
    check_daemon_header,
    check_trigger_socket_header,
    parse_client_request,
    parse_connection_terminated,
    validate_trigger,
)
from .framing import END_OF_STREAM, NEED_DATA, Message, Signal
from .handshake import check_client_hello, check_hello_header, negotiate_control, negotiate_data
from .messages import ExecParams, Trigger4, parse_exec, parse_hello
from .records import record
from .session import ChannelBase, DaemonSession, Hello, PortAnswer, Step, refuse_all

__all__ = [
    "Event",
    "Hello",
    "ConnectionTerminated",
    "Exec",
    "ServiceConnect",
    "ServiceRefused",
    "ClientRequest",
    "UnexpectedData",
    "PortAnswer",
    "DaemonControl",
    "AgentControl",
    "ClientSession",
    "DaemonSession",
    "TriggerConnection",
    "DataHello",
    "NEED_DATA",
    "END_OF_STREAM",
]


@record
class ConnectionTerminated:
    """Agent -> daemon: the call on data port `port` with `domain` is over."""

    domain: int
    port: int


@record
class Exec:
    """Daemon -> agent: EXEC_CMDLINE or JUST_EXEC."""

    msgtype: int
    params: ExecParams


@record
class ServiceConnect:
    """Daemon -> agent: the request `ident` (32 bytes) is allowed; connect there."""

    ident: bytes
    domain: int
    port: int


@record
class ServiceRefused:
    """Daemon -> agent: the request `ident` is refused."""

    ident: bytes


@record
class ClientRequest:
    """Client -> daemon: the one request of a connection (Client socket, 3)."""

    msgtype: int
    params: ExecParams

    @property
    def ident(self) -> bytes:
        """SERVICE_CONNECT: the request ident, up to its NUL."""
        payload = self.params.payload
        return payload[: payload.find(b"\0")]

    def for_agent(self, default_user: bytes) -> bytes:
        """The payload to forward: `DEFAULT:` replaced by the daemon's user (Client socket, 5),
        except in a SERVICE_CONNECT, which carries an ident."""
        if self.msgtype == MsgType.SERVICE_CONNECT:
            return self.params.payload
        return replace_default_user(self.params.payload, default_user)


@record
class UnexpectedData:
    """Client -> daemon: bytes after the request, where nothing more may come."""


Event = (Hello | ConnectionTerminated | ServiceRequest | Refusal | Exec | ServiceConnect
         | ServiceRefused | ClientRequest | UnexpectedData | PortAnswer | Trigger4)


class _Control(ChannelBase):
    """daemon <-> agent: HELLO at min(own, peer) >= 2, then the side's messages."""

    def __init__(self, own_version: int) -> None:
        super().__init__(check_hello_header)
        self.own_version = own_version
        #: the negotiated version, 0 until the peer's HELLO
        self.version = 0

    def _handle(self, message: Message) -> Event:
        if self.version == 0:
            peer = parse_hello(message.msgtype, message.payload)
            self.version = negotiate_control(peer, self.own_version)
            self.reader.check_header = self._check
            return Hello(self.version, peer)
        return self._message(message)

    def _check(self, msgtype: int, length: int) -> None:
        raise NotImplementedError

    def _message(self, message: Message) -> Event:
        raise NotImplementedError


class DaemonControl(_Control):
    """The daemon's end: triggers and CONNECTION_TERMINATED from the agent (Trigger validation). Any
    RemoteProtocolError is fatal for the daemon (the agent is its only peer here)."""

    def _check(self, msgtype: int, length: int) -> None:
        check_agent_header(msgtype, length, self.version)

    def _message(self, message: Message) -> ConnectionTerminated | ServiceRequest | Refusal:
        if message.msgtype == MsgType.CONNECTION_TERMINATED:
            return ConnectionTerminated(*parse_connection_terminated(message.payload))
        return validate_trigger(message.msgtype, message.payload, self.version)


class AgentControl(_Control):
    """The agent's end: exec requests and answers to its triggers from the daemon (Refusals)."""

    def _check(self, msgtype: int, length: int) -> None:
        check_daemon_header(msgtype, length)

    def _message(self, message: Message) -> Exec | ServiceConnect | ServiceRefused:
        if message.msgtype == MsgType.SERVICE_REFUSED:
            return ServiceRefused(message.payload)
        params = parse_exec(message.payload)
        if message.msgtype == MsgType.SERVICE_CONNECT:
            ident = params.payload[:32].ljust(32, b"\0")
            return ServiceConnect(ident, params.connect_domain, params.connect_port)
        return Exec(message.msgtype, params)


class ClientSession(ChannelBase):
    """The daemon's end of one client connection on its socket (Client socket): the client's HELLO
    (version >= 3), one request, then nothing (RUNNING). Any RemoteProtocolError: close
    the connection and forward nothing."""

    def __init__(self) -> None:
        super().__init__(check_hello_header)
        self.step = Step.HELLO

    @property
    def wanted(self) -> int:
        # RUNNING: one byte is enough to know that the client broke the rule
        return 1 if self.step is Step.RUNNING else self.reader.wanted

    def next_event(self) -> Event | Signal:
        if self.step is Step.RUNNING:
            if self.reader.eof:
                return END_OF_STREAM
            if self.reader.buffered:
                return UnexpectedData()
            return NEED_DATA
        return super().next_event()

    def _handle(self, message: Message) -> Hello | ClientRequest:
        if self.step is Step.HELLO:
            peer = parse_hello(message.msgtype, message.payload)
            version = check_client_hello(peer)
            self.step = Step.REQUEST
            self.reader.check_header = check_client_header
            return Hello(version, peer)
        request = ClientRequest(message.msgtype, parse_client_request(message.payload))
        self.step = Step.RUNNING
        self.reader.check_header = refuse_all
        return request


class TriggerConnection(ChannelBase):
    """The agent's end of one trigger-socket connection (Trigger socket): one TRIGGER_SERVICE4."""

    def __init__(self) -> None:
        super().__init__(check_trigger_socket_header)

    def _handle(self, message: Message) -> Trigger4:
        self.reader.check_header = refuse_all
        return Trigger4.parse(message.payload)


class DataHello(ChannelBase):
    """The HELLO that opens a data channel (Data channel), where nothing else is read: a service
    side that only reports a status consumes the caller's HELLO this way."""

    def __init__(self, own_version: int) -> None:
        super().__init__(check_hello_header)
        self.own_version = own_version

    def _handle(self, message: Message) -> Hello:
        peer = parse_hello(message.msgtype, message.payload)
        self.reader.check_header = refuse_all
        return Hello(negotiate_data(peer, self.own_version), peer)
