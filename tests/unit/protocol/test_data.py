"""Data-stream rules of both ends of a call (docs/reference/protocol.md#data-messages)."""

from __future__ import annotations

import pytest

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.data import Action, CallerStream, ServiceStream
from pyqrexec.protocol.messages import parse_exit_code

STDIN, STDOUT = MsgType.DATA_STDIN, MsgType.DATA_STDOUT
STDERR, EXIT = MsgType.DATA_STDERR, MsgType.DATA_EXIT_CODE
UNKNOWN = [0, 0x18F, 0x194, 0x200, 0x202, 0x211, 0x213, 0x300, 0xFFFF_FFFF]
Stream = CallerStream | ServiceStream


# (version, limit)
LIMITS = [(2, 4096), (3, 65536), (4, 65536)]


@pytest.mark.parametrize("cls", [CallerStream, ServiceStream])
@pytest.mark.parametrize(("version", "limit"), LIMITS)
@pytest.mark.parametrize("msgtype", [STDIN, STDOUT, STDERR, EXIT])
def test_chunk_limit(cls: type[Stream], version: int, limit: int, msgtype: int) -> None:
    stream = cls(version)
    assert stream.limit == limit
    assert stream.receive(msgtype, limit) is not Action.BROKEN
    assert stream.receive(msgtype, limit + 1) is Action.BROKEN
    assert stream.receive(msgtype, 0xFFFF_FFFF) is Action.BROKEN


@pytest.mark.parametrize("cls", [CallerStream, ServiceStream])
@pytest.mark.parametrize("msgtype", UNKNOWN, ids=hex)
def test_unknown_type_breaks(cls: type[Stream], msgtype: int) -> None:
    for length in (0, 4):
        assert cls(4).receive(msgtype, length) is Action.BROKEN


def test_caller_sequence() -> None:
    s = CallerStream(4)
    assert s.receive(STDOUT, 5) is Action.OUTPUT
    assert s.receive(STDERR, 3) is Action.ERROR
    assert s.receive(STDERR, 0) is Action.ERROR_EOF
    assert s.receive(STDOUT, 0) is Action.OUTPUT_EOF
    assert (s.output_closed, s.exit_seen) == (True, False)
    assert s.receive(EXIT, 4) is Action.EXIT
    assert s.exit_seen is True
    assert s.warnings == []


def test_caller_empty_stderr_is_not_output() -> None:
    """An empty STDERR is ignored: it never produces local stderr output."""
    s = CallerStream(4)
    assert s.receive(STDERR, 0) is Action.ERROR_EOF
    assert s.receive(STDOUT, 1) is Action.OUTPUT


@pytest.mark.parametrize(
    ("cls", "right", "swapped", "warning"),
    [
        (CallerStream, STDOUT, STDIN, "service sent MSG_DATA_STDIN"),
        (ServiceStream, STDIN, STDOUT, "client sent MSG_DATA_STDOUT"),
    ],
)
def test_swapped_type_accepted_with_one_warning(
    cls: type[Stream], right: int, swapped: int, warning: str
) -> None:
    s = cls(3)
    assert s.receive(swapped, 10) is Action.OUTPUT
    assert s.receive(swapped, 10) is Action.OUTPUT
    assert s.receive(right, 10) is Action.OUTPUT
    assert s.receive(swapped, 0) is Action.OUTPUT_EOF
    assert s.receive(swapped, 4) is Action.DISCARD
    assert s.warnings == [warning]
    # a second connection warns again
    other = cls(3)
    other.receive(swapped, 1)
    assert other.warnings == [warning]


@pytest.mark.parametrize(
    ("cls", "kind", "close"),
    [(CallerStream, STDOUT, "close_output"), (ServiceStream, STDIN, "close_input")],
)
@pytest.mark.parametrize("by_eof", [True, False])
def test_data_after_local_stream_closed_is_discarded(
    cls: type[Stream], kind: int, close: str, by_eof: bool
) -> None:
    s = cls(2)
    if by_eof:
        assert s.receive(kind, 0) is Action.OUTPUT_EOF
    else:
        getattr(s, close)()
    assert s.receive(kind, 4096) is Action.DISCARD
    assert s.receive(kind, 0) is Action.DISCARD
    assert s.receive(kind, 4097) is Action.BROKEN  # oversize stays fatal


@pytest.mark.parametrize("msgtype", [STDERR, EXIT])
def test_service_ignores_stderr_and_exit(msgtype: int) -> None:
    s = ServiceStream(4)
    assert s.receive(msgtype, 4) is Action.DISCARD
    assert s.receive(msgtype, 0) is Action.DISCARD
    assert len(s.warnings) == 2
    assert s.receive(STDIN, 3) is Action.OUTPUT


def test_service_sequence() -> None:
    s = ServiceStream(2)
    assert s.receive(STDIN, 4096) is Action.OUTPUT
    assert s.receive(STDIN, 0) is Action.OUTPUT_EOF
    assert s.input_closed
    assert s.warnings == []


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_short_exit_code(length: int) -> None:
    s = CallerStream(4)
    assert s.receive(EXIT, length) is Action.EXIT
    assert parse_exit_code(b"\x07" * length) == 255
