"""Codecs for every qrexec message and struct (protocol.md §3, §4).

All integers are little-endian. Encoders return the full message (header included) unless
their name says otherwise; decoders take the payload (header already removed) and raise
`RemoteProtocolError` on a malformed one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import IDENT_SIZE, MsgType
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "HEADER",
    "pack_header",
    "unpack_header",
    "hello",
    "parse_hello",
    "ExecParams",
    "pack_exec",
    "parse_exec",
    "pack_exec_params",
    "parse_exec_params_only",
    "pack_service_refused",
    "pack_connection_terminated",
    "Trigger2",
    "Trigger3",
    "Trigger4",
    "pack_trigger2",
    "pack_trigger3",
    "pack_trigger4",
    "CmdInfo",
    "pack_cmd_info",
    "parse_cmd_info_head",
    "CMD_INFO_HEAD",
    "pack_exit_code",
    "parse_exit_code",
    "fixed_field",
    "field_str",
]

HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_EXEC_HEAD = struct.Struct("<II")
_TRIGGER2 = struct.Struct("<64s32s32s")
_TRIGGER3_HEAD = struct.Struct("<64s32s")
_TRIGGER4_HEAD = struct.Struct("<64s64s32s")
CMD_INFO_HEAD = struct.Struct("<iiiI")

_U32_MAX = 0xFFFFFFFF


def pack_header(msgtype: int, length: int) -> bytes:
    if not 0 <= length <= _U32_MAX:
        raise LocalProtocolError(f"length {length} does not fit a u32")
    return HEADER.pack(msgtype, length)


def unpack_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(type, len) of an 8-byte header."""
    if len(data) < HEADER.size:
        raise RemoteProtocolError("short header")
    t, n = HEADER.unpack_from(data)
    return t, n


def hello(version: int) -> bytes:
    """A complete MSG_HELLO (always 12 bytes)."""
    return HEADER.pack(MsgType.HELLO, 4) + _U32.pack(version)


def parse_hello(msgtype: int, payload: bytes) -> int:
    """The announced version of a HELLO; anything else is a protocol error."""
    if msgtype != MsgType.HELLO or len(payload) != 4:
        raise RemoteProtocolError(f"expected HELLO, got type {msgtype:#x} len {len(payload)}")
    (version,) = _U32.unpack(payload)
    return int(version)


def fixed_field(value: bytes, size: int) -> bytes:
    """`value` NUL-padded to `size`; it must leave room for the terminating NUL."""
    if len(value) >= size or b"\0" in value:
        raise LocalProtocolError(f"{value!r} does not fit a {size}-byte string field")
    return value.ljust(size, b"\0")


def field_str(field: bytes) -> bytes:
    """Content of a fixed string field: bytes up to the first NUL."""
    nul = field.find(b"\0")
    return field if nul < 0 else field[:nul]


@dataclass(frozen=True, slots=True)
class ExecParams:
    """`exec_params` and what follows it (MSG_EXEC_CMDLINE, JUST_EXEC, SERVICE_CONNECT)."""

    connect_domain: int
    connect_port: int
    #: cmdline (or ident) bytes as sent, normally NUL-terminated
    payload: bytes = b""


def pack_exec_params(domain: int, port: int) -> bytes:
    return _EXEC_HEAD.pack(domain, port)


def parse_exec_params_only(data: bytes) -> tuple[int, int]:
    """The 8-byte `exec_params` written back to qrexec-client-vm (no header)."""
    if len(data) != _EXEC_HEAD.size:
        raise RemoteProtocolError(f"exec_params must be 8 bytes, got {len(data)}")
    d, p = _EXEC_HEAD.unpack(data)
    return int(d), int(p)


def pack_exec(msgtype: int, domain: int, port: int, payload: bytes) -> bytes:
    body = _EXEC_HEAD.pack(domain, port) + payload
    return pack_header(msgtype, len(body)) + body


def parse_exec(payload: bytes) -> ExecParams:
    if len(payload) < _EXEC_HEAD.size:
        raise RemoteProtocolError(f"exec message too short: {len(payload)} bytes")
    d, p = _EXEC_HEAD.unpack_from(payload)
    return ExecParams(int(d), int(p), bytes(payload[_EXEC_HEAD.size :]))


def pack_service_refused(ident: bytes) -> bytes:
    if len(ident) != IDENT_SIZE:
        ident = fixed_field(ident, IDENT_SIZE)
    return HEADER.pack(MsgType.SERVICE_REFUSED, IDENT_SIZE) + ident


def pack_connection_terminated(domain: int, port: int) -> bytes:
    return HEADER.pack(MsgType.CONNECTION_TERMINATED, 8) + _EXEC_HEAD.pack(domain, port)


@dataclass(frozen=True, slots=True)
class Trigger2:
    """`trigger_service_params` (v2), raw fixed fields."""

    service_name: bytes  # 64
    target_domain: bytes  # 32
    ident: bytes  # 32

    @classmethod
    def parse(cls, payload: bytes) -> Trigger2:
        if len(payload) != _TRIGGER2.size:
            raise RemoteProtocolError(f"TRIGGER_SERVICE must be 128 bytes, got {len(payload)}")
        s, t, i = _TRIGGER2.unpack(payload)
        return cls(s, t, i)


@dataclass(frozen=True, slots=True)
class Trigger3:
    """`trigger_service_params3`: fixed head plus the service-name field."""

    target_domain: bytes  # 64
    ident: bytes  # 32
    service_name: bytes  # m bytes, should end with its only NUL

    @classmethod
    def parse(cls, payload: bytes) -> Trigger3:
        if len(payload) <= _TRIGGER3_HEAD.size:
            raise RemoteProtocolError("TRIGGER_SERVICE3 without service name")
        t, i = _TRIGGER3_HEAD.unpack_from(payload)
        return cls(t, i, bytes(payload[_TRIGGER3_HEAD.size :]))


@dataclass(frozen=True, slots=True)
class Trigger4:
    """`trigger_service_params4`: fixed head plus the service-name field."""

    source_domain: bytes  # 64
    target_domain: bytes  # 64
    ident: bytes  # 32
    service_name: bytes

    @classmethod
    def parse(cls, payload: bytes) -> Trigger4:
        if len(payload) <= _TRIGGER4_HEAD.size:
            raise RemoteProtocolError("TRIGGER_SERVICE4 without service name")
        s, t, i = _TRIGGER4_HEAD.unpack_from(payload)
        return cls(s, t, i, bytes(payload[_TRIGGER4_HEAD.size :]))


def pack_trigger2(service: bytes, target: bytes, ident: bytes) -> bytes:
    body = _TRIGGER2.pack(
        fixed_field(service, 64), fixed_field(target, 32), fixed_field(ident, IDENT_SIZE)
    )
    return HEADER.pack(MsgType.TRIGGER_SERVICE, len(body)) + body


def pack_trigger3(service: bytes, target: bytes, ident: bytes) -> bytes:
    body = (
        _TRIGGER3_HEAD.pack(fixed_field(target, 64), fixed_field(ident, IDENT_SIZE))
        + service
        + b"\0"
    )
    return HEADER.pack(MsgType.TRIGGER_SERVICE3, len(body)) + body


def pack_trigger4(service: bytes, target: bytes, ident: bytes, source: bytes = b"") -> bytes:
    body = (
        _TRIGGER4_HEAD.pack(
            fixed_field(source, 64), fixed_field(target, 64), fixed_field(ident, IDENT_SIZE)
        )
        + service
        + b"\0"
    )
    return HEADER.pack(MsgType.TRIGGER_SERVICE4, len(body)) + body


@dataclass(frozen=True, slots=True)
class CmdInfo:
    """`qrexec_cmd_info` (agent -> fork server, no msg_header)."""

    msgtype: int
    connect_domain: int
    connect_port: int
    cmdline: bytes  # NUL-terminated, without the USER: prefix


def pack_cmd_info(info: CmdInfo) -> bytes:
    return (
        CMD_INFO_HEAD.pack(
            info.msgtype, info.connect_domain, info.connect_port, len(info.cmdline)
        )
        + info.cmdline
    )


def parse_cmd_info_head(data: bytes) -> tuple[int, int, int, int]:
    t, d, p, n = CMD_INFO_HEAD.unpack(data)
    return int(t), int(d), int(p), int(n)


def pack_exit_code(status: int) -> bytes:
    return HEADER.pack(MsgType.DATA_EXIT_CODE, 4) + _I32.pack(status)


def parse_exit_code(payload: bytes) -> int:
    """Status of an EXIT_CODE payload: first 4 bytes as i32, 255 if shorter (§12.1)."""
    if len(payload) < 4:
        return 255
    (status,) = _I32.unpack_from(payload)
    return int(status)
