"""The data channel's reading end and the end-of-call ordering, fed bytes only."""

from __future__ import annotations

import pytest

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.data import (
    Action,
    CallerOrder,
    CallerStream,
    DataChannel,
    ServiceOrder,
    ServiceStream,
)
from pyqrexec.protocol.errors import RemoteProtocolError
from pyqrexec.protocol.messages import hello, pack_exit_code, pack_header

STDIN, STDOUT = MsgType.DATA_STDIN, MsgType.DATA_STDOUT
STDERR = MsgType.DATA_STDERR


def msg(msgtype: int, payload: bytes = b"") -> bytes:
    return pack_header(msgtype, len(payload)) + payload


def feed(channel: DataChannel, wire: bytes, step: int) -> tuple[list[tuple[Action, bytes]], str]:
    """Actions (payloads copied) and the error, if any, of `wire` fed `step` bytes at a time."""
    out: list[tuple[Action, bytes]] = []
    for i in range(0, len(wire), step):
        chunk = wire[i : i + step]
        channel.free_space()[: len(chunk)] = chunk
        channel.received(len(chunk))
        try:
            for action, payload in channel.actions():
                out.append((action, bytes(payload)))
        except RemoteProtocolError as err:
            return out, str(err)
    return out, ""


@pytest.mark.parametrize("step", [1, 5, 1 << 20])
def test_caller_reads_hello_then_the_service_streams(step: int) -> None:
    wire = (hello(3) + msg(STDOUT, b"out") + msg(STDERR, b"err") + msg(STDOUT) + msg(STDERR)
            + pack_exit_code(7))
    channel = DataChannel(CallerStream, 4)
    actions, error = feed(channel, wire, step)
    assert error == ""
    assert channel.version == 3 and channel.limit == 65536
    assert actions == [(Action.OUTPUT, b"out"), (Action.ERROR, b"err"), (Action.OUTPUT_EOF, b""),
                       (Action.ERROR_EOF, b""), (Action.EXIT, b"\7\0\0\0")]


@pytest.mark.parametrize("step", [1, 1 << 20])
def test_version_2_limit_refuses_the_header_before_its_payload(step: int) -> None:
    wire = hello(2) + msg(STDIN, b"x" * 4096) + pack_header(STDIN, 4097)
    channel = DataChannel(ServiceStream, 4)
    actions, error = feed(channel, wire, step)
    assert actions == [(Action.OUTPUT, b"x" * 4096)]
    assert "exceeds 4096" in error


def test_messages_before_a_violation_come_first() -> None:
    wire = hello(4) + msg(STDOUT, b"a") + msg(MsgType.EXEC_CMDLINE, b"12345678") + msg(STDOUT)
    channel = DataChannel(CallerStream, 4)
    actions, error = feed(channel, wire, 1 << 20)
    assert actions == [(Action.OUTPUT, b"a")]
    assert error == "message 0x200 of 8 bytes"


@pytest.mark.parametrize("wire", [msg(STDOUT, b"x"), pack_header(MsgType.HELLO, 8), hello(1)])
def test_first_message_must_be_a_usable_hello(wire: bytes) -> None:
    channel = DataChannel(CallerStream, 4)
    _, error = feed(channel, wire + b"\0" * 8, 1 << 20)
    assert error
    assert channel.version == 0


def test_payload_views_stay_valid_until_the_next_read() -> None:
    channel = DataChannel(CallerStream, 4, capacity=64)
    data = hello(4) + msg(STDOUT, b"abc") + msg(STDOUT, b"de")[:5]
    channel.free_space()[: len(data)] = data
    channel.received(len(data))
    [(_, view)] = list(channel.actions())
    assert bytes(view) == b"abc"
    rest = msg(STDOUT, b"de")[5:]
    space = channel.free_space()  # the partial message moved to the front
    space[: len(rest)] = rest
    channel.received(len(rest))
    assert [bytes(p) for _, p in channel.actions()] == [b"de"]


def test_warning_once_for_a_swapped_stream() -> None:
    channel = DataChannel(ServiceStream, 4)
    feed(channel, hello(4) + msg(STDOUT, b"a") + msg(STDOUT, b"b"), 1 << 20)
    assert channel.take_warnings() == ["client sent MSG_DATA_STDOUT"]
    assert channel.take_warnings() == []


def test_caller_order_with_input() -> None:
    order = CallerOrder(has_input=True, prefix=b"p" * 5000)
    assert order.opening(4096) == [b"p" * 4096, b"p" * 904]
    order.exit_code(b"\3\0\0\0")
    assert order.status == 3
    assert order.eof_after_exit()  # input queued is dropped, the EOF goes next
    assert not order.eof_after_exit()


def test_caller_order_input_ended_first() -> None:
    order = CallerOrder(has_input=True)
    assert order.opening(65536) == []
    assert not order.eof_after_exit()  # no exit code yet
    order.input_ended()
    order.exit_code(b"\1")  # short: 255
    assert order.status == 255
    assert not order.eof_after_exit()


def test_caller_order_without_input() -> None:
    order = CallerOrder(has_input=False, prefix=b"ab")
    assert order.opening(4096) == [b"ab", b""]
    order.exit_code(b"\0\0\0\0")
    assert not order.eof_after_exit()


def test_caller_order_exit_before_start_drops_the_prefix() -> None:
    order = CallerOrder(has_input=True, prefix=b"never")
    order.exit_code(b"\0\0\0\0")
    assert order.eof_after_exit()
    assert order.opening(4096) == []


def test_service_order() -> None:
    order = ServiceOrder(has_stderr=False)
    assert order.opening() == [STDERR]
    assert order.opening() == []
    assert ServiceOrder(has_stderr=True).opening() == []
    assert not ServiceOrder.exit_code_due(True, False)
    assert not ServiceOrder.exit_code_due(False, True)
    assert ServiceOrder.exit_code_due(True, True)
