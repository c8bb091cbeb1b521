"""MessageReader fed whole, byte by byte and with trailing data ."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.control import check_agent_header
from pyqrexec.protocol.errors import LocalProtocolError, RemoteProtocolError
from pyqrexec.protocol.framing import (
    END_OF_STREAM,
    NEED_DATA,
    Message,
    MessageReader,
    max_payload,
)
from pyqrexec.protocol.handshake import check_hello_header
from pyqrexec.protocol.messages import (
    hello,
    pack_connection_terminated,
    pack_exec,
    pack_exit_code,
    pack_header,
    pack_trigger4,
)

from .verdict import verdict

if TYPE_CHECKING:
    from pyqrexec.protocol.framing import HeaderCheck

ANY = max_payload(0xFFFF_FFFF)


def feeds(wire: bytes) -> Iterator[list[bytes]]:
    """The same bytes delivered whole, byte by byte and in two uneven halves."""
    yield [wire]
    yield [wire[i : i + 1] for i in range(len(wire))]
    yield [wire[:3], wire[3:]] if len(wire) > 3 else [wire]


def read_all(chunks: list[bytes], check: HeaderCheck = ANY) -> tuple[list[Message], int]:
    """Messages out of `chunks`; after each chunk every complete message is taken."""
    reader = MessageReader(check)
    out: list[Message] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        out += list(reader)
    assert reader.next_message() is NEED_DATA
    return out, reader.buffered


STREAM = [
    (hello(4), Message(MsgType.HELLO, b"\4\0\0\0")),
    (pack_exec(MsgType.EXEC_CMDLINE, 0, 513, b"user:id\0"),
     Message(MsgType.EXEC_CMDLINE, b"\0\0\0\0\x01\x02\0\0user:id\0")),
    (pack_header(MsgType.DATA_STDOUT, 0), Message(MsgType.DATA_STDOUT, b"")),
    (pack_exit_code(3), Message(MsgType.DATA_EXIT_CODE, b"\3\0\0\0")),
]


@pytest.mark.parametrize("trailing", [b"", b"\x00", b"\x00\x03\x00\x00\x04\x00\x00\x00\x04"])
@pytest.mark.parametrize("count", range(1, len(STREAM) + 1))
def test_messages_whole_bytewise_and_with_trailing_data(trailing: bytes, count: int) -> None:
    wire = b"".join(w for w, _ in STREAM[:count]) + trailing
    expected = [m for _, m in STREAM[:count]]
    for chunks in feeds(wire):
        assert read_all(chunks) == (expected, len(trailing))


def test_big_payload_bytewise_and_compaction() -> None:
    payload = bytes(range(256)) * 300  # 76800 bytes, past the compaction threshold
    wire = pack_header(MsgType.DATA_STDIN, len(payload)) + payload
    reader = MessageReader(ANY)
    for _ in range(3):
        reader.receive_data(wire)
    assert list(reader) == [Message(MsgType.DATA_STDIN, payload)] * 3
    assert reader.buffered == 0


def test_clean_end_of_stream() -> None:
    reader = MessageReader(ANY)
    reader.receive_data(hello(3))
    reader.receive_eof()
    assert reader.eof
    assert reader.next_message() == Message(MsgType.HELLO, b"\3\0\0\0")
    assert reader.next_message() is END_OF_STREAM
    assert reader.next_message() is END_OF_STREAM
    assert repr(END_OF_STREAM) == "END_OF_STREAM"


@pytest.mark.parametrize("cut", [1, 7, 8, 11])
def test_eof_inside_a_message_is_a_short_read(cut: int) -> None:
    reader = MessageReader(ANY)
    reader.receive_data(hello(4)[:cut])
    assert reader.next_message() is NEED_DATA
    reader.receive_eof()
    for _ in range(2):  # the error sticks
        with pytest.raises(RemoteProtocolError, match="short read"):
            reader.next_message()


def test_header_is_refused_before_the_payload_arrives() -> None:
    """The check sees the header at its 8th byte; no payload byte is needed."""
    reader = MessageReader(check_hello_header)
    wire = pack_header(MsgType.EXEC_CMDLINE, 0xFFFF_FFFF)
    for byte in wire[:7]:
        reader.receive_data(bytes([byte]))
        assert reader.next_message() is NEED_DATA
    reader.receive_data(wire[7:])
    with pytest.raises(RemoteProtocolError, match="expected HELLO"):
        reader.next_message()
    reader.receive_data(b"more")
    with pytest.raises(RemoteProtocolError):
        reader.next_message()


def test_header_check_runs_once_per_message() -> None:
    seen: list[tuple[int, int]] = []

    def check(msgtype: int, length: int) -> None:
        seen.append((msgtype, length))

    reader = MessageReader(check)
    wire = pack_exit_code(0)
    for i in range(len(wire)):
        reader.receive_data(wire[i : i + 1])
        reader.next_message()
    assert seen == [(MsgType.DATA_EXIT_CODE, 4)]


@pytest.mark.parametrize(("length", "ok"), [(4096, True), (4097, False)])
def test_max_payload(length: int, ok: bool) -> None:
    reader = MessageReader(max_payload(4096))
    reader.receive_data(pack_header(MsgType.DATA_STDIN, length))
    assert verdict(ok, reader.next_message, "exceeds 4096") == (NEED_DATA if ok else None)


def test_daemon_control_channel() -> None:
    """HELLO first, then the agent checks at the negotiated version, swapped in between."""
    wire = hello(4) + pack_trigger4(b"svc", b"tgt", b"SOCKET3") + pack_connection_terminated(
        0, 513
    )
    for chunks in feeds(wire):
        reader = MessageReader(check_hello_header)
        out: list[Message] = []
        for chunk in chunks:
            reader.receive_data(chunk)
            for message in reader:
                out.append(message)
                if message.msgtype == MsgType.HELLO:
                    reader.check_header = lambda t, n: check_agent_header(t, n, 4)
        assert [m.msgtype for m in out] == [
            MsgType.HELLO, MsgType.TRIGGER_SERVICE4, MsgType.CONNECTION_TERMINATED
        ]
        assert reader.buffered == 0


def test_misuse() -> None:
    reader = MessageReader(ANY)
    with pytest.raises(LocalProtocolError):
        reader.receive_data(b"")
    reader.receive_eof()
    with pytest.raises(LocalProtocolError):
        reader.receive_data(b"x")


def test_use_buffer_moves_the_unread_bytes_along() -> None:
    """A fixed-capacity reader switched to a larger buffer mid-message: the partial message
    moves, the views handed out before keep their bytes, the next messages come whole."""
    first = pack_header(MsgType.DATA_STDOUT, 5) + b"hello"
    second = pack_header(MsgType.DATA_STDOUT, 20) + b"x" * 20
    wire = first + second
    reader = MessageReader(ANY, buffer=memoryview(bytearray(len(first) + 10)))
    free = reader.free_space()
    free[: len(free)] = wire[: len(free)]
    reader.received(len(free))
    found = reader.next_view()
    assert not isinstance(found, type(NEED_DATA))
    view = found[1]
    assert reader.next_view() is NEED_DATA  # the second one's header and 2 of its bytes
    reader.use_buffer(memoryview(bytearray(1000)))
    assert bytes(view) == b"hello"
    rest = wire[len(first) + 10 :]
    reader.free_space()[: len(rest)] = rest
    reader.received(len(rest))
    found = reader.next_view()
    assert not isinstance(found, type(NEED_DATA))
    assert found[0] == MsgType.DATA_STDOUT and bytes(found[1]) == b"x" * 20
    assert len(reader.free_space()) == 1000
