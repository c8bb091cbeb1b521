"""Any peer input parses or raises RemoteProtocolError, nothing else (h11's fuzz invariant)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyqrexec.protocol.cmdline import check_fork_cmdline, parse_command, split_user
from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.control import (
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
from pyqrexec.protocol.errors import RemoteProtocolError
from pyqrexec.protocol.messages import (
    Trigger2,
    Trigger3,
    Trigger4,
    parse_cmd_info_head,
    parse_exec,
    parse_exec_params_only,
    parse_exit_code,
    parse_hello,
    unpack_header,
)

TYPES = st.one_of(st.sampled_from([v for k, v in vars(MsgType).items() if k.isupper()]),
                  st.integers(0, 0xFFFF_FFFF))
VERSIONS = st.sampled_from([2, 3, 4])
NAME = re.compile(r"[A-Za-z0-9_.+-]*")
DOMAIN = re.compile(r"[A-Za-z0-9_.@:-]*")


def trigger_payloads() -> st.SearchStrategy[tuple[int, bytes]]:
    """Mostly well-sized trigger payloads with arbitrary content, plus pure noise."""
    sized = st.one_of(
        st.tuples(st.just(int(MsgType.TRIGGER_SERVICE)), st.binary(min_size=128, max_size=128)),
        st.tuples(st.just(int(MsgType.TRIGGER_SERVICE3)), st.binary(min_size=96, max_size=200)),
        st.tuples(st.just(int(MsgType.TRIGGER_SERVICE4)), st.binary(min_size=160, max_size=260)),
    )
    return st.one_of(sized, st.tuples(TYPES, st.binary(max_size=300)))


def accepts_or_remote_error(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except RemoteProtocolError:
        return None


@given(trigger_payloads(), VERSIONS)
def test_validate_trigger(message: tuple[int, bytes], version: int) -> None:
    msgtype, payload = message
    result = accepts_or_remote_error(lambda: validate_trigger(msgtype, payload, version))
    if isinstance(result, ServiceRequest):
        assert NAME.fullmatch(result.service)
        assert result.service and not result.service.startswith("+")
        assert DOMAIN.fullmatch(result.target)
        assert result.source is None or DOMAIN.fullmatch(result.source)
        assert (result.source is not None) is (msgtype == MsgType.TRIGGER_SERVICE4)
    if isinstance(result, Refusal):
        assert len(result.ident) == 32
        assert result.ident in payload
    if result is not None:
        check_agent_header(msgtype, len(payload), version)


@pytest.mark.parametrize("cls", [Trigger2, Trigger3, Trigger4])
@given(payload=st.binary(max_size=300))
def test_trigger_parse(cls: type[Trigger2 | Trigger3 | Trigger4], payload: bytes) -> None:
    accepts_or_remote_error(lambda: cls.parse(payload))


@given(st.binary(max_size=300))
def test_parse_command(command: bytes) -> None:
    accepts_or_remote_error(lambda: parse_command(command))
    accepts_or_remote_error(lambda: split_user(command))


@given(st.binary(max_size=64))
def test_small_parsers(data: bytes) -> None:
    for fn in (parse_exec, parse_exec_params_only, parse_cmd_info_head, unpack_header,
               parse_connection_terminated, parse_exit_code, parse_client_request,
               check_fork_cmdline):
        accepts_or_remote_error(lambda fn=fn: fn(data))  # type: ignore[misc]


@given(TYPES, st.binary(max_size=8))
def test_parse_hello(msgtype: int, payload: bytes) -> None:
    accepts_or_remote_error(lambda: parse_hello(msgtype, payload))


@given(TYPES, st.integers(0, 0xFFFF_FFFF), VERSIONS)
def test_header_checks(msgtype: int, length: int, version: int) -> None:
    accepts_or_remote_error(lambda: check_agent_header(msgtype, length, version))
    accepts_or_remote_error(lambda: check_daemon_header(msgtype, length))
    accepts_or_remote_error(lambda: check_client_header(msgtype, length))
    accepts_or_remote_error(lambda: check_trigger_socket_header(msgtype, length))
