"""Agent -> daemon policing (docs/reference/protocol.md#trigger-validation,
docs/reference/protocol.md#refusals) and the agent's daemon checks."""

from __future__ import annotations

from collections.abc import Callable

import pytest

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
    valid_data_port,
    validate_trigger,
)
from pyqrexec.protocol.errors import RemoteProtocolError
from pyqrexec.protocol.messages import ExecParams

from .verdict import verdict

T2, T3, T4 = MsgType.TRIGGER_SERVICE, MsgType.TRIGGER_SERVICE3, MsgType.TRIGGER_SERVICE4
TERM = MsgType.CONNECTION_TERMINATED
VERSIONS = (2, 3, 4)
GOOD_IDENT = b"SOCKET7".ljust(32, b"\0")
Builder = Callable[..., bytes]


def le(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "little") for v in values)


def pad(value: bytes, size: int) -> bytes:
    """A raw fixed field: `value` NUL-padded (or not at all when it fills the field)."""
    assert len(value) <= size
    return value.ljust(size, b"\0")


def raw2(service: bytes = b"svc", target: bytes = b"tgt", ident: bytes = GOOD_IDENT) -> bytes:
    return pad(service, 64) + pad(target, 32) + pad(ident, 32)


def raw3(service: bytes = b"svc\0", target: bytes = b"tgt", ident: bytes = GOOD_IDENT) -> bytes:
    return pad(target, 64) + pad(ident, 32) + service


def raw4(
    service: bytes = b"svc\0",
    target: bytes = b"tgt",
    ident: bytes = GOOD_IDENT,
    source: bytes = b"",
) -> bytes:
    return pad(source, 64) + pad(target, 64) + pad(ident, 32) + service


#: (message type, version it belongs to, raw payload builder)
TRIGGERS = [(T2, 2, raw2), (T3, 3, raw3), (T4, 4, raw4)]


# --- check_agent_header: what makes the daemon exit ------------------------------------------

UNKNOWN_TYPES = [0, 0x190, 0x191, 0x192, 0x193, 0x200, 0x201, 0x202, 0x203, 0x20F, 0x214,
                 0x300, 0xFFFF_FFFF]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("msgtype", UNKNOWN_TYPES, ids=hex)
def test_unknown_type_is_fatal(msgtype: int, version: int) -> None:
    with pytest.raises(RemoteProtocolError, match="unknown mesage type"):
        check_agent_header(msgtype, 8, version)


# (type, length, versions at which the header is acceptable)
HEADER_CASES = [
    (T2, 128, {2}),
    (T2, 127, set()),
    (T2, 129, set()),
    (T2, 0, set()),
    (T3, 96, set()),
    (T3, 97, {3, 4}),
    (T3, 128, {3, 4}),
    (T3, 96 + 65000, {3, 4}),
    (T3, 96 + 65001, set()),
    (T3, 0, set()),
    (T4, 160, set()),
    (T4, 161, {4}),
    (T4, 160 + 65000, {4}),
    (T4, 160 + 65001, set()),
    (T4, 97, set()),
    (TERM, 8, {2, 3, 4}),
    (TERM, 0, set()),
    (TERM, 7, set()),
    (TERM, 9, set()),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("msgtype", "length", "ok_at"), HEADER_CASES)
def test_agent_header(msgtype: int, length: int, ok_at: set[int], version: int) -> None:
    verdict(version in ok_at, lambda: check_agent_header(msgtype, length, version))


@pytest.mark.parametrize(
    ("port", "ok"), [(0, False), (512, False), (513, True), (600, True), (768, True),
                     (769, False), (0xFFFF_FFFF, False)]
)
def test_data_port_range(port: int, ok: bool) -> None:
    assert valid_data_port(port) is ok
    result = verdict(ok, lambda: parse_connection_terminated(le(7, port)), "Invalid port")
    assert result == ((7, port) if ok else None)


@pytest.mark.parametrize("size", [0, 7, 9])
def test_connection_terminated_payload_size(size: int) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_connection_terminated(bytes(size))


# --- validate_trigger: accepted requests -----------------------------------------------------

@pytest.mark.parametrize(("msgtype", "version", "raw"), TRIGGERS)
def test_plain_request(msgtype: int, version: int, raw: Builder) -> None:
    for v in range(version, 5) if msgtype != T2 else (2,):
        result = validate_trigger(msgtype, raw(b"test.Svc+arg" + (b"" if msgtype == T2
                                                                    else b"\0")), v)
        assert result == ServiceRequest(
            "test.Svc+arg", "tgt", "" if msgtype == T4 else None, GOOD_IDENT
        )


def test_v4_source() -> None:
    assert validate_trigger(T4, raw4(source=b"src"), 4) == ServiceRequest(
        "svc", "tgt", "src", GOOD_IDENT
    )


@pytest.mark.parametrize(("msgtype", "version", "_raw"), TRIGGERS)
@pytest.mark.parametrize("other", VERSIONS)
def test_trigger_at_wrong_version_is_fatal(
    msgtype: int, version: int, _raw: Builder, other: int
) -> None:
    allowed = {T2: {2}, T3: {3, 4}, T4: {4}}[msgtype]
    payload = _raw()
    if other in allowed:
        assert isinstance(validate_trigger(msgtype, payload, other), ServiceRequest)
    else:
        with pytest.raises(RemoteProtocolError):
            validate_trigger(msgtype, payload, other)


@pytest.mark.parametrize("msgtype", [TERM, MsgType.HELLO, 0x1234])
def test_validate_trigger_rejects_non_triggers(msgtype: int) -> None:
    with pytest.raises(RemoteProtocolError):
        validate_trigger(msgtype, bytes(8), 4)


# Step 1: forced NUL in the last byte of each fixed string field.

def test_v2_fixed_fields_forced_nul() -> None:
    req = validate_trigger(T2, raw2(service=b"s" * 64, target=b"t" * 32), 2)
    assert req == ServiceRequest("s" * 63, "t" * 31, None, GOOD_IDENT)


def test_v3_target_forced_nul() -> None:
    req = validate_trigger(T3, raw3(target=b"t" * 64), 3)
    assert req == ServiceRequest("svc", "t" * 63, None, GOOD_IDENT)


def test_v4_fixed_fields_forced_nul() -> None:
    req = validate_trigger(T4, raw4(target=b"t" * 64, source=b"s" * 64), 4)
    assert req == ServiceRequest("svc", "t" * 63, "s" * 63, GOOD_IDENT)


def test_ident_is_not_forced() -> None:
    ident = b"A" * 32
    assert validate_trigger(T4, raw4(ident=ident), 4) == Refusal(ident, "invalid ident")


# Step 2: `$` -> `@` in v2 targets only.

@pytest.mark.parametrize(
    ("msgtype", "raw", "target"),
    [(T2, raw2, "@dispvm:@tag:x"), (T3, raw3, "_dispvm:_tag:x"), (T4, raw4, "_dispvm:_tag:x")],
)
def test_dollar_target(msgtype: int, raw: Builder, target: str) -> None:
    version = {T2: 2, T3: 3, T4: 4}[msgtype]
    result = validate_trigger(msgtype, raw(target=b"$dispvm:$tag:x"), version)
    assert isinstance(result, ServiceRequest)
    assert result.target == target


# Step 3: sanitising.

NASTY = b"a b/c+d@e:f$g\x80h\x01i~"


@pytest.mark.parametrize(("msgtype", "version", "raw"), TRIGGERS)
def test_sanitising(msgtype: int, version: int, raw: Builder) -> None:
    service = NASTY if msgtype == T2 else NASTY + b"\0"
    result = validate_trigger(msgtype, raw(service=service, target=NASTY), version)
    assert isinstance(result, ServiceRequest)
    assert result.service == "a_b_c+d_e_f_g_h_i_"
    assert result.target == ("a_b_c_d@e:f@g_h_i_" if msgtype == T2 else "a_b_c_d@e:f_g_h_i_")


def test_sanitising_source() -> None:
    result = validate_trigger(T4, raw4(source=NASTY), 4)
    assert isinstance(result, ServiceRequest)
    assert result.source == "a_b_c_d@e:f_g_h_i_"


def test_bytes_after_nul_in_fixed_fields_are_ignored() -> None:
    result = validate_trigger(T4, raw4(target=b"tgt\0junk\xff", source=b"\0junk"), 4)
    assert result == ServiceRequest("svc", "tgt", "", GOOD_IDENT)
    result = validate_trigger(T2, raw2(service=b"svc\0junk"), 2)
    assert result == ServiceRequest("svc", "tgt", None, GOOD_IDENT)


# Step 4: idents.

IDENT_CHARS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.- "
VALID_IDENTS = [
    pytest.param(bytes(32), id="empty"),
    pytest.param(b"SOCKET12".ljust(32, b"\0"), id="socket"),
    pytest.param(b"a b.c-d_e".ljust(32, b"\0"), id="space-and-punct"),
    pytest.param(b"x" * 31 + b"\0", id="31-chars"),
    pytest.param(b" " * 31 + b"\0", id="all-spaces"),
]
INVALID_IDENTS = [
    pytest.param(b"x" * 32, id="no-nul"),
    pytest.param(b"abc\0x".ljust(32, b"\0"), id="byte-after-nul"),
    pytest.param(b"\0" * 31 + b"x", id="last-byte-after-nul"),
    pytest.param(b"a+b".ljust(32, b"\0"), id="plus"),
    pytest.param(b"a@b".ljust(32, b"\0"), id="at"),
    pytest.param(b"a:b".ljust(32, b"\0"), id="colon"),
    pytest.param(b"a/b".ljust(32, b"\0"), id="slash"),
    pytest.param(b"a\tb".ljust(32, b"\0"), id="tab"),
    pytest.param(b"a\x80".ljust(32, b"\0"), id="high-byte"),
    pytest.param(b"$".ljust(32, b"\0"), id="dollar"),
]


@pytest.mark.parametrize(("msgtype", "version", "raw"), TRIGGERS)
@pytest.mark.parametrize("ident", VALID_IDENTS)
def test_valid_idents(msgtype: int, version: int, raw: Builder, ident: bytes) -> None:
    result = validate_trigger(msgtype, raw(ident=ident), version)
    assert isinstance(result, ServiceRequest)
    assert result.ident == ident


@pytest.mark.parametrize(("msgtype", "version", "raw"), TRIGGERS)
@pytest.mark.parametrize("ident", INVALID_IDENTS)
def test_invalid_ident_refused_with_raw_bytes(
    msgtype: int, version: int, raw: Builder, ident: bytes
) -> None:
    # the ident is checked before the service, so a bad service does not change the answer
    for service in (b"svc", b"+svc", b""):
        name = service if msgtype == T2 else service + b"\0"
        result = validate_trigger(msgtype, raw(service=name, ident=ident), version)
        assert result == Refusal(ident, "invalid ident")


def test_every_ident_byte() -> None:
    for byte in range(1, 256):
        ident = bytes([byte]).ljust(32, b"\0")
        result = validate_trigger(T4, raw4(ident=ident), 4)
        assert isinstance(result, ServiceRequest) is (byte in IDENT_CHARS), byte


# Step 5: v3/v4 service-name field.

@pytest.mark.parametrize(("msgtype", "raw"), [(T3, raw3), (T4, raw4)])
@pytest.mark.parametrize(
    ("field", "reason"),
    [
        (b"svc", "Service name not NUL-terminated"),
        (b"s", "Service name not NUL-terminated"),
        (b"s" * 65000, "Service name not NUL-terminated"),
        (b"sv\0c\0", "Service name contains NUL byte at offset 2"),
        (b"\0svc\0", "Service name contains NUL byte at offset 0"),
        (b"svc\0\0", "Service name contains NUL byte at offset 3"),
        (b"svc\0x", "Service name contains NUL byte at offset 3"),
    ],
    ids=lambda v: repr(v)[:20] if isinstance(v, bytes) else "",
)
def test_service_field_refused(msgtype: int, raw: Builder, field: bytes, reason: str) -> None:
    assert validate_trigger(msgtype, raw(service=field), 4) == Refusal(GOOD_IDENT, reason)


@pytest.mark.parametrize(("msgtype", "raw"), [(T3, raw3), (T4, raw4)])
def test_longest_service_name(msgtype: int, raw: Builder) -> None:
    result = validate_trigger(msgtype, raw(service=b"s" * 64999 + b"\0"), 4)
    assert isinstance(result, ServiceRequest)
    assert result.service == "s" * 64999


# Step 6: empty service / service starting with `+`.

@pytest.mark.parametrize(("msgtype", "version", "raw"), TRIGGERS)
@pytest.mark.parametrize("service", [b"", b"+", b"+arg", b"++"])
def test_empty_or_plus_service_refused(
    msgtype: int, version: int, raw: Builder, service: bytes
) -> None:
    name = service if msgtype == T2 else service + b"\0"
    result = validate_trigger(msgtype, raw(service=name), version)
    assert isinstance(result, Refusal)
    assert result.ident == GOOD_IDENT


@pytest.mark.parametrize(("msgtype", "version", "raw"), TRIGGERS)
def test_service_that_sanitises_to_plus_start_is_kept(
    msgtype: int, version: int, raw: Builder
) -> None:
    name = b" +x" if msgtype == T2 else b" +x\0"
    result = validate_trigger(msgtype, raw(service=name), version)
    assert isinstance(result, ServiceRequest)
    assert result.service == "_+x"


# --- check_daemon_header: the agent's side ---------------------------------------------------

EXEC_TYPES = [MsgType.EXEC_CMDLINE, MsgType.JUST_EXEC, MsgType.SERVICE_CONNECT]


@pytest.mark.parametrize(
    ("msgtype", "length", "ok"),
    [
        *[(t, n, ok) for t in EXEC_TYPES
          for n, ok in ((0, False), (8, False), (9, True), (65535, True))],
        *[(MsgType.SERVICE_REFUSED, n, n == 32) for n in (0, 31, 32, 33)],
        *[(t, 32, False) for t in (0, 0x190, 0x193, 0x210, 0x211, 0x212, 0x213, 0x300, 0x204)],
    ],
)
def test_daemon_header(msgtype: int, length: int, ok: bool) -> None:
    verdict(ok, lambda: check_daemon_header(msgtype, length))


# --- client socket and trigger socket --------------------------------------------------------

@pytest.mark.parametrize(
    ("msgtype", "length", "ok"),
    [
        *[(t, n, ok) for t in EXEC_TYPES
          for n, ok in ((0, False), (8, False), (9, True), (65535, True), (65536, False))],
        *[(t, 16, False) for t in (0x1FF, 0x203, 0x210, 0x213, 0x300, 0x190)],
    ],
)
def test_client_header(msgtype: int, length: int, ok: bool) -> None:
    verdict(ok, lambda: check_client_header(msgtype, length))


@pytest.mark.parametrize(
    ("payload", "ok"),
    [
        (le(0, 0) + b"user:id\0", True),
        (le(7, 513) + b"SOCKET3\0", True),
        (le(7, 768) + b"\0", True),
        (le(0, 0) + b"user:id", False),
        (le(0, 0) + b"user:\0id", False),
        (le(0, 512) + b"x\0", False),
        (le(0, 769) + b"x\0", False),
        (le(0, 1) + b"x\0", False),
    ],
)
def test_client_request(payload: bytes, ok: bool) -> None:
    expected = ExecParams(
        int.from_bytes(payload[:4], "little"), int.from_bytes(payload[4:8], "little"), payload[8:]
    )
    assert verdict(ok, lambda: parse_client_request(payload)) == (expected if ok else None)


@pytest.mark.parametrize(
    ("msgtype", "length", "ok"),
    [(T4, 160, False), (T4, 161, True), (T4, 65160, True), (T4, 65161, False),
     (T3, 128, False), (T2, 128, False), (0, 128, False)],
)
def test_trigger_socket_header(msgtype: int, length: int, ok: bool) -> None:
    verdict(ok, lambda: check_trigger_socket_header(msgtype, length), "is it outdated")
