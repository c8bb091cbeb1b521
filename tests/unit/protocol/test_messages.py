"""Byte-exact encodings of every message and struct (docs/reference/protocol.md#message-layouts,
docs/reference/protocol.md#client-socket)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.errors import LocalProtocolError, RemoteProtocolError
from pyqrexec.protocol.messages import (
    CmdInfo,
    ExecParams,
    Trigger2,
    Trigger3,
    Trigger4,
    field_str,
    fixed_field,
    hello,
    pack_cmd_info,
    pack_connection_terminated,
    pack_exec,
    pack_exec_params,
    pack_exit_code,
    pack_header,
    pack_service_refused,
    pack_trigger2,
    pack_trigger3,
    pack_trigger4,
    parse_cmd_info_head,
    parse_exec,
    parse_exec_params_only,
    parse_exit_code,
    parse_hello,
    unpack_header,
)

U32 = st.integers(0, 0xFFFFFFFF)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def test_msgtype_values() -> None:
    assert {k: v for k, v in vars(MsgType).items() if k.isupper()} == {
        "DATA_STDIN": 0x190,
        "DATA_STDOUT": 0x191,
        "DATA_STDERR": 0x192,
        "DATA_EXIT_CODE": 0x193,
        "EXEC_CMDLINE": 0x200,
        "JUST_EXEC": 0x201,
        "SERVICE_CONNECT": 0x202,
        "SERVICE_REFUSED": 0x203,
        "TRIGGER_SERVICE": 0x210,
        "CONNECTION_TERMINATED": 0x211,
        "TRIGGER_SERVICE3": 0x212,
        "TRIGGER_SERVICE4": 0x213,
        "HELLO": 0x300,
    }


@pytest.mark.parametrize(
    ("version", "wire"),
    [
        (4, "00030000 04000000 04000000"),
        (3, "00030000 04000000 03000000"),
        (2, "00030000 04000000 02000000"),
    ],
)
def test_hello_bytes(version: int, wire: str) -> None:
    data = hello(version)
    assert data == h(wire)
    assert len(data) == 12
    t, n = unpack_header(data[:8])
    assert parse_hello(t, data[8 : 8 + n]) == version


@pytest.mark.parametrize(
    ("msgtype", "payload"),
    [
        (MsgType.HELLO, b"\4\0\0"),
        (MsgType.HELLO, b"\4\0\0\0\0"),
        (MsgType.EXEC_CMDLINE, b"\4\0\0\0"),
        (MsgType.DATA_STDIN, b""),
    ],
)
def test_parse_hello_rejects(msgtype: int, payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_hello(msgtype, payload)


def test_header_is_little_endian() -> None:
    assert pack_header(0x12345678, 0x9ABCDEF0) == h("78563412 f0debc9a")
    assert unpack_header(h("78563412 f0debc9a")) == (0x12345678, 0x9ABCDEF0)
    # bytes after the 8-byte header are not looked at
    assert unpack_header(h("00030000 04000000 ff")) == (0x300, 4)


@pytest.mark.parametrize("length", [-1, 0x1_0000_0000])
def test_pack_header_rejects_non_u32_length(length: int) -> None:
    with pytest.raises(LocalProtocolError):
        pack_header(MsgType.DATA_STDIN, length)


@pytest.mark.parametrize("size", range(8))
def test_unpack_short_header(size: int) -> None:
    with pytest.raises(RemoteProtocolError):
        unpack_header(bytes(size))


@given(U32, U32)
def test_header_round_trip(t: int, n: int) -> None:
    assert unpack_header(pack_header(t, n)) == (t, n)


def test_section9_byte_example() -> None:
    """`qrexec-client -d work user:id` (work = domid 5) and the daemon's reply."""
    request = pack_exec(MsgType.EXEC_CMDLINE, 0, 0, b"user:id\0")
    assert request == h("00020000 10000000 00000000 00000000 75736572 3a696400")
    reply = pack_exec(MsgType.EXEC_CMDLINE, 5, 513, b"")
    assert reply == h("00020000 08000000 05000000 01020000")
    assert parse_exec(reply[8:]) == ExecParams(5, 513, b"")
    assert parse_exec(request[8:]) == ExecParams(0, 0, b"user:id\0")


@pytest.mark.parametrize("msgtype", [MsgType.EXEC_CMDLINE, MsgType.JUST_EXEC,
                                     MsgType.SERVICE_CONNECT])
@given(d=U32, p=U32, payload=st.binary(max_size=200))
def test_exec_round_trip(msgtype: int, d: int, p: int, payload: bytes) -> None:
    wire = pack_exec(msgtype, d, p, payload)
    assert unpack_header(wire) == (msgtype, 8 + len(payload))
    assert parse_exec(wire[8:]) == ExecParams(d, p, payload)


@pytest.mark.parametrize("size", range(8))
def test_parse_exec_too_short(size: int) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_exec(bytes(size))


def test_exec_params_only() -> None:
    assert pack_exec_params(9, 513) == h("09000000 01020000")
    assert parse_exec_params_only(h("09000000 01020000")) == (9, 513)
    for bad in (b"", bytes(7), bytes(9)):
        with pytest.raises(RemoteProtocolError):
            parse_exec_params_only(bad)


def test_service_refused() -> None:
    wire = pack_service_refused(b"SOCKET7")
    assert wire == h("03020000 20000000") + b"SOCKET7" + bytes(25)
    raw = b"bad\x01ident" + bytes(23)
    assert pack_service_refused(raw) == h("03020000 20000000") + raw
    with pytest.raises(LocalProtocolError):
        pack_service_refused(b"x" * 33)


def test_connection_terminated() -> None:
    assert pack_connection_terminated(7, 513) == h("11020000 08000000 07000000 01020000")


def test_trigger2_bytes() -> None:
    wire = pack_trigger2(b"test.Svc+arg", b"tgt", b"SOCKET5")
    assert wire[:8] == h("10020000 80000000")
    assert len(wire) == 8 + 128
    body = wire[8:]
    assert body[:64] == b"test.Svc+arg".ljust(64, b"\0")
    assert body[64:96] == b"tgt".ljust(32, b"\0")
    assert body[96:] == b"SOCKET5".ljust(32, b"\0")
    assert Trigger2.parse(body) == Trigger2(body[:64], body[64:96], body[96:])


def test_trigger3_bytes() -> None:
    wire = pack_trigger3(b"test.Svc", b"tgt", b"SOCKET5")
    assert wire[:8] == h("12020000 69000000")  # 96 + 9
    body = wire[8:]
    assert body[:64] == b"tgt".ljust(64, b"\0")
    assert body[64:96] == b"SOCKET5".ljust(32, b"\0")
    assert body[96:] == b"test.Svc\0"
    assert Trigger3.parse(body) == Trigger3(body[:64], body[64:96], b"test.Svc\0")


def test_trigger4_bytes() -> None:
    wire = pack_trigger4(b"test.Svc", b"tgt", b"SOCKET", source=b"src")
    assert wire[:8] == h("13020000 a9000000")  # 160 + 9
    body = wire[8:]
    assert body[:64] == b"src".ljust(64, b"\0")
    assert body[64:128] == b"tgt".ljust(64, b"\0")
    assert body[128:160] == b"SOCKET".ljust(32, b"\0")
    assert body[160:] == b"test.Svc\0"
    assert Trigger4.parse(body) == Trigger4(body[:64], body[64:128], body[128:160], b"test.Svc\0")
    assert pack_trigger4(b"s", b"t", b"i")[8:72] == bytes(64)


@pytest.mark.parametrize(
    ("cls", "size"), [(Trigger2, 127), (Trigger2, 129), (Trigger3, 96), (Trigger4, 160)]
)
def test_trigger_parse_rejects_length(cls: type[Trigger2 | Trigger3 | Trigger4], size: int) -> None:
    with pytest.raises(RemoteProtocolError):
        cls.parse(bytes(size))


@pytest.mark.parametrize(
    ("pack", "service", "target", "ident"),
    [
        pytest.param(pack_trigger2, b"s" * 64, b"t", b"i", id="v2-long-service"),
        pytest.param(pack_trigger2, b"s", b"t" * 32, b"i", id="v2-long-target"),
        pytest.param(pack_trigger2, b"s", b"t", b"i" * 32, id="v2-long-ident"),
        pytest.param(pack_trigger3, b"s", b"t" * 64, b"i", id="v3-long-target"),
        pytest.param(pack_trigger3, b"s", b"t", b"i" * 32, id="v3-long-ident"),
        pytest.param(pack_trigger4, b"s", b"t" * 64, b"i", id="v4-long-target"),
        pytest.param(pack_trigger4, b"s", b"t", b"i" * 32, id="v4-long-ident"),
        pytest.param(pack_trigger2, b"s\0x", b"t", b"i", id="v2-nul-in-service"),
        pytest.param(pack_trigger3, b"s\0x", b"t", b"i", id="v3-nul-in-service"),
        pytest.param(pack_trigger4, b"s\0x", b"t", b"i", id="v4-nul-in-service"),
        pytest.param(pack_trigger3, b"s" * 65000, b"t", b"i", id="v3-service-65000"),
        pytest.param(pack_trigger4, b"s" * 65000, b"t", b"i", id="v4-service-65000"),
    ],
)
def test_trigger_pack_refuses_what_does_not_fit(
    pack: Callable[[bytes, bytes, bytes], bytes], service: bytes, target: bytes, ident: bytes
) -> None:
    with pytest.raises(LocalProtocolError):
        pack(service, target, ident)


def test_trigger_pack_limits() -> None:
    assert len(pack_trigger2(b"s" * 63, b"t" * 31, b"i" * 31)) == 136
    assert len(pack_trigger3(b"s" * 64999, b"t" * 63, b"i" * 31)) == 8 + 96 + 65000
    assert len(pack_trigger4(b"s" * 64999, b"t" * 63, b"i", b"x" * 63)) == 8 + 160 + 65000
    with pytest.raises(LocalProtocolError):
        pack_trigger4(b"s", b"t", b"i", b"x" * 64)


def test_cmd_info_bytes() -> None:
    info = CmdInfo(0x200, 7, 513, b"QUBESRPC a b\0")
    wire = pack_cmd_info(info)
    assert wire == h("00020000 07000000 01020000 0d000000") + b"QUBESRPC a b\0"
    assert parse_cmd_info_head(wire[:16]) == (0x200, 7, 513, 13)


@pytest.mark.parametrize("size", [0, 15, 17])
def test_cmd_info_head_wrong_size(size: int) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_cmd_info_head(bytes(size))


@pytest.mark.parametrize("n", [0, 0x8000_0000, 0xFFFF_FFFF])
def test_cmd_info_head_bad_cmdline_len(n: int) -> None:
    """The fork server refuses cmdline_len 0 or > 2^31-1."""
    with pytest.raises(RemoteProtocolError):
        parse_cmd_info_head(h("00020000 00000000 00000000") + n.to_bytes(4, "little"))
    assert parse_cmd_info_head(h("01020000 00000000 00000000 ffffff7f"))[3] == 0x7FFF_FFFF


@pytest.mark.parametrize(
    ("status", "wire"),
    [(0, "93010000 04000000 00000000"), (-1, "93010000 04000000 ffffffff"),
     (127, "93010000 04000000 7f000000"), (256 + 9, "93010000 04000000 09010000")],
)
def test_exit_code_bytes(status: int, wire: str) -> None:
    assert pack_exit_code(status) == h(wire)
    assert parse_exit_code(h(wire)[8:]) == status


@pytest.mark.parametrize(
    ("payload", "status"),
    [(b"", 255), (b"\0", 255), (b"\0\0\0", 255), (b"\1\0\0\0", 1),
     (b"\2\0\0\0junk", 2), (b"\xff\xff\xff\xff", -1)],
)
def test_parse_exit_code(payload: bytes, status: int) -> None:
    assert parse_exit_code(payload) == status


def test_fixed_field() -> None:
    assert fixed_field(b"abc", 8) == b"abc\0\0\0\0\0"
    assert fixed_field(b"", 4) == bytes(4)
    assert fixed_field(b"x" * 7, 8) == b"x" * 7 + b"\0"
    for bad in (b"x" * 8, b"a\0b"):
        with pytest.raises(LocalProtocolError):
            fixed_field(bad, 8)


@pytest.mark.parametrize(
    ("field", "text"),
    [(b"abc\0\0", b"abc"), (b"abc", b"abc"), (b"\0abc", b""), (b"a\0b\0", b"a")],
)
def test_field_str(field: bytes, text: bytes) -> None:
    assert field_str(field) == text


@pytest.mark.parametrize(
    ("payload", "cmdline"),
    [
        (b"user:id\0", b"user:id"),
        (b"user:idX", b"user:id"),  # the last byte is forced to NUL
        (b"user:a\0b\0", b"user:a"),
        (b"", b""),
        (b"\0", b""),
        (b"SOCKET7" + bytes(25), b"SOCKET7"),
    ],
)
def test_exec_cmdline_forces_last_nul(payload: bytes, cmdline: bytes) -> None:
    assert ExecParams(0, 513, payload).cmdline == cmdline


def test_client_trigger_writes_dollar_keywords_as_at_and_cuts_names() -> None:
    from pyqrexec.protocol.messages import client_trigger, pack_trigger4

    assert client_trigger(b"test.Add", b"$default", b"") == pack_trigger4(
        b"test.Add", b"@default", b"SOCKET", b"")
    long = b"v" * 80
    assert client_trigger(b"s", long, long) == pack_trigger4(b"s", long[:63], b"SOCKET",
                                                             long[:63])
