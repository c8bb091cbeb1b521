"""Each channel end fed bytes only: whole, byte by byte, and with what may follow."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyqrexec.protocol.channel import (
    END_OF_STREAM,
    NEED_DATA,
    AgentControl,
    ClientRequest,
    ClientSession,
    ConnectionTerminated,
    DaemonControl,
    DaemonSession,
    DataHello,
    Exec,
    Hello,
    PortAnswer,
    ServiceConnect,
    ServiceRefused,
    TriggerConnection,
    UnexpectedData,
)
from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.control import Refusal, ServiceRequest
from pyqrexec.protocol.errors import RemoteProtocolError
from pyqrexec.protocol.handshake import IncompatibleVersion
from pyqrexec.protocol.messages import (
    Trigger4,
    hello,
    pack_connection_terminated,
    pack_exec,
    pack_exec_params,
    pack_header,
    pack_service_refused,
    pack_trigger2,
    pack_trigger4,
)

IDENT = b"SOCKET7".ljust(32, b"\0")


def chunkings(wire: bytes) -> Iterator[list[bytes]]:
    """The bytes whole and one at a time."""
    yield [wire]
    yield [wire[i : i + 1] for i in range(len(wire))]


def events(channel: object, chunks: list[bytes], eof: bool = False,
           count: int | None = None) -> list[object]:
    """Events until `count` of them or until the bytes run out (then EOF if `eof`), feeding
    at most `wanted` bytes at a time, as the programs do."""
    data = b"".join(chunks)
    step = max(len(c) for c in chunks) if chunks else 1
    out: list[object] = []
    pos = 0
    while count is None or len(out) < count:
        event = channel.next_event()  # type: ignore[attr-defined]
        if event is not NEED_DATA:
            out.append(event)
            if event is END_OF_STREAM:
                break
            continue
        if pos == len(data):
            if not eof or channel.reader.eof:  # type: ignore[attr-defined]
                break
            channel.receive_eof()  # type: ignore[attr-defined]
            continue
        n = min(channel.wanted, step, len(data) - pos)  # type: ignore[attr-defined]
        channel.receive_data(data[pos : pos + n])  # type: ignore[attr-defined]
        pos += n
    return out


def test_daemon_control_hello_then_agent_messages() -> None:
    wire = (hello(4) + pack_trigger4(b"svc", b"tgt", b"SOCKET7", b"src")
            + pack_connection_terminated(3, 513))
    for chunks in chunkings(wire):
        channel = DaemonControl(4)
        got = events(channel, chunks, eof=True)
        assert got[0] == Hello(4, 4)
        assert got[1] == ServiceRequest("svc", "tgt", "src", IDENT)
        assert got[2] == ConnectionTerminated(3, 513)
        assert got[3] is END_OF_STREAM
        assert channel.version == 4


def test_daemon_control_negotiates_down_and_polices_at_that_version() -> None:
    channel = DaemonControl(4)
    assert events(channel, [hello(3)]) == [Hello(3, 3)]
    # a v4 trigger at version 3 is fatal: the header is refused before its payload
    with pytest.raises(RemoteProtocolError, match="invalid message type"):
        events(channel, [pack_trigger4(b"svc", b"tgt", b"SOCKET7")[:8]])


def test_daemon_control_refusal_and_bad_port() -> None:
    channel = DaemonControl(2)
    bad = pack_trigger2(b"svc", b"tgt", b"x").replace(b"x\0", b"\x01\0", 1)
    assert events(channel, [hello(2), bad])[1] == Refusal(
        b"\x01".ljust(32, b"\0"), "invalid ident")
    with pytest.raises(RemoteProtocolError, match="Invalid port"):
        events(channel, [pack_connection_terminated(0, 512)])


@pytest.mark.parametrize("cut", [1, 8, 11])
def test_control_eof_inside_a_message_is_a_short_read(cut: int) -> None:
    channel = DaemonControl(4)
    with pytest.raises(RemoteProtocolError, match="short read"):
        events(channel, [hello(4)[:cut]], eof=True)
    assert channel.buffered


def test_control_incompatible_version() -> None:
    with pytest.raises(IncompatibleVersion, match="remote 1, local 4"):
        events(AgentControl(4), [hello(1)])


def test_control_first_message_must_be_hello() -> None:
    with pytest.raises(RemoteProtocolError, match="expected HELLO"):
        events(DaemonControl(4), [pack_header(MsgType.TRIGGER_SERVICE4, 0xFFFF)])


def test_agent_control() -> None:
    wire = (hello(4) + pack_exec(MsgType.EXEC_CMDLINE, 5, 514, b"user:cmd\0")
            + pack_exec(MsgType.SERVICE_CONNECT, 0, 515, b"SOCKET7")
            + pack_service_refused(IDENT))
    for chunks in chunkings(wire):
        got = events(AgentControl(4), chunks)
        assert got[0] == Hello(4, 4)
        assert isinstance(got[1], Exec) and got[1].msgtype == MsgType.EXEC_CMDLINE
        assert got[1].params.cmdline == b"user:cmd"
        assert got[2] == ServiceConnect(IDENT, 0, 515)
        assert got[3] == ServiceRefused(IDENT)


def test_agent_control_unknown_message_is_fatal() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown message type"):
        events(AgentControl(4), [hello(4), pack_header(MsgType.DATA_STDIN, 0)])


def test_client_session() -> None:
    wire = hello(3) + pack_exec(MsgType.EXEC_CMDLINE, 2, 0, b"DEFAULT:cmd\0")
    for chunks in chunkings(wire):
        session = ClientSession()
        got = events(session, chunks)
        assert got[0] == Hello(3, 3)
        request = got[1]
        assert isinstance(request, ClientRequest)
        assert request.for_agent(b"user") == b"user:cmd\0"
        # RUNNING: one byte more is a violation, EOF the end
        assert session.wanted == 1
        assert events(session, [b"x"], count=1) == [UnexpectedData()]
    session = ClientSession()
    events(session, [wire])
    assert events(session, [], eof=True) == [END_OF_STREAM]


def test_client_session_service_connect_keeps_its_ident() -> None:
    session = ClientSession()
    got = events(session, [hello(4), pack_exec(MsgType.SERVICE_CONNECT, 0, 0,
                                               b"DEFAULT:\0")])
    request = got[1]
    assert isinstance(request, ClientRequest)
    assert request.ident == b"DEFAULT:"
    assert request.for_agent(b"user") == b"DEFAULT:\0"


@pytest.mark.parametrize("wire", [
    hello(2),
    pack_header(MsgType.HELLO, 8) + b"\3\0\0\0\0\0\0\0",
    hello(3) + pack_exec(MsgType.EXEC_CMDLINE, 0, 0, b"no nul"),
    hello(3) + pack_exec(MsgType.EXEC_CMDLINE, 0, 512, b"cmd\0"),
    hello(3) + pack_header(MsgType.HELLO, 4),
    hello(3) + pack_header(MsgType.EXEC_CMDLINE, 8),
])
def test_client_session_refusals(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        events(ClientSession(), [wire])


def test_daemon_session() -> None:
    session = DaemonSession()
    assert events(session, [hello(3)]) == [Hello(3, 3)]
    session.expect_answer(MsgType.JUST_EXEC)
    answer = pack_header(MsgType.JUST_EXEC, 8) + pack_exec_params(9, 600)
    assert events(session, [answer + b"trailing"], count=1) == [PortAnswer(9, 600)]
    assert session.buffered == 0  # nothing past the answer was read
    assert events(DaemonSession.answer_to(MsgType.EXEC_CMDLINE), [], eof=True) == [
        END_OF_STREAM]


@pytest.mark.parametrize("wire", [
    pack_header(MsgType.HELLO, 8) + b"\3\0\0\0\0\0\0\0",  # the length field counts
    hello(2),
])
def test_daemon_session_hello_refusals(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        events(DaemonSession(), [wire])


def test_daemon_session_answer_of_another_type() -> None:
    session = DaemonSession.answer_to(MsgType.EXEC_CMDLINE)
    with pytest.raises(RemoteProtocolError, match="unexpected daemon answer"):
        events(session, [pack_header(MsgType.JUST_EXEC, 8)])


def test_trigger_connection() -> None:
    wire = pack_trigger4(b"svc+arg", b"tgt", b"SOCKET")
    for chunks in chunkings(wire):
        got = events(TriggerConnection(), chunks)
        assert isinstance(got[0], Trigger4) and got[0].service_name == b"svc+arg\0"
    with pytest.raises(RemoteProtocolError, match="outdated"):
        events(TriggerConnection(), [pack_trigger2(b"svc", b"tgt", b"x")])


def test_data_hello() -> None:
    for chunks in chunkings(hello(3)):
        assert events(DataHello(4), chunks) == [Hello(3, 3)]
    with pytest.raises(RemoteProtocolError):
        events(DataHello(4), [pack_header(MsgType.HELLO, 5) + b"\4\0\0\0\0"])
    assert events(DataHello(4), [], eof=True) == [END_OF_STREAM]
