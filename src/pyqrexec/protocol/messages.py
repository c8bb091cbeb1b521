"""Codecs for every qrexec message and struct (docs/reference/protocol.md#message-types,
docs/reference/protocol.md#message-layouts).

All integers are little-endian. Encoders return the full message (header included) unless
their name says otherwise; decoders take the payload (header already removed) and raise
`RemoteProtocolError` on a malformed one.
"""

from __future__ import annotations

import struct

from .constants import IDENT_SIZE, MAX_SERVICE_NAME_LEN, MsgType
from .errors import LocalProtocolError, RemoteProtocolError
from .records import record
from .wire import (
    EXEC_HEAD,
    HEADER,
    field_str,
    fixed_field,
    hello,
    pack_exec,
    pack_exec_params,
    pack_exit_code,
    pack_header,
    parse_exec_params_only,
    parse_exit_code,
    parse_hello,
    unpack_header,
)

__all__ = [
    "client_trigger",
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

_TRIGGER2 = struct.Struct("<64s32s32s")
_TRIGGER3_HEAD = struct.Struct("<64s32s")
_TRIGGER4_HEAD = struct.Struct("<64s64s32s")
CMD_INFO_HEAD = struct.Struct("<iiiI")



@record
class ExecParams:
    """`exec_params` and what follows it (MSG_EXEC_CMDLINE, JUST_EXEC, SERVICE_CONNECT)."""

    connect_domain: int
    connect_port: int
    #: cmdline (or ident) bytes as sent, normally NUL-terminated
    payload: bytes = b""

    @property
    def cmdline(self) -> bytes:
        """The payload as the agent reads it: last byte forced to NUL
        (docs/reference/protocol.md#refusals), text up to the
        first NUL. An unterminated payload thus loses its last byte, as upstream's does."""
        payload = self.payload[:-1]
        nul = payload.find(b"\0")
        return payload if nul < 0 else payload[:nul]


def parse_exec(payload: bytes) -> ExecParams:
    if len(payload) < EXEC_HEAD.size:
        raise RemoteProtocolError(f"exec message too short: {len(payload)} bytes")
    d, p = EXEC_HEAD.unpack_from(payload)
    return ExecParams(int(d), int(p), bytes(payload[EXEC_HEAD.size :]))


def pack_service_refused(ident: bytes) -> bytes:
    if len(ident) != IDENT_SIZE:
        ident = fixed_field(ident, IDENT_SIZE)
    return HEADER.pack(MsgType.SERVICE_REFUSED, IDENT_SIZE) + ident


def pack_connection_terminated(domain: int, port: int) -> bytes:
    return pack_exec(MsgType.CONNECTION_TERMINATED, domain, port, b"")


@record
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


@record
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


@record
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


def _name_field(service: bytes) -> bytes:
    """The v3/v4 service-name field: the name and its NUL, at most 65000 bytes
    (docs/reference/protocol.md#constants)."""
    if b"\0" in service or len(service) >= MAX_SERVICE_NAME_LEN:
        raise LocalProtocolError(f"service name of {len(service)} bytes does not fit")
    return service + b"\0"


def pack_trigger3(service: bytes, target: bytes, ident: bytes) -> bytes:
    name = _name_field(service)
    body = (
        _TRIGGER3_HEAD.pack(fixed_field(target, 64), fixed_field(ident, IDENT_SIZE)) + name
    )
    return HEADER.pack(MsgType.TRIGGER_SERVICE3, len(body)) + body


def pack_trigger4(service: bytes, target: bytes, ident: bytes, source: bytes = b"") -> bytes:
    name = _name_field(service)
    body = (
        _TRIGGER4_HEAD.pack(
            fixed_field(source, 64), fixed_field(target, 64), fixed_field(ident, IDENT_SIZE)
        )
        + name
    )
    return HEADER.pack(MsgType.TRIGGER_SERVICE4, len(body)) + body


def client_trigger(service: bytes, target: bytes, source: bytes = b"") -> bytes:
    """The request a calling program gives its agent, as `qrexec-client-vm` makes it: the
    target's `$` keywords written as `@` ones, target and source cut to 63 bytes (longer
    names are cut, not refused), the caller's socket as ident."""
    return pack_trigger4(service, target.replace(b"$", b"@")[:63], b"SOCKET", source[:63])


@record
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


_MAX_CMD_INFO_LEN = 0x7FFF_FFFF


def parse_cmd_info_head(data: bytes) -> tuple[int, int, int, int]:
    """(type, domain, port, cmdline_len) of a 16-byte `qrexec_cmd_info` head.

    The fork server refuses `cmdline_len` 0 or > 2^31-1
    (docs/reference/protocol.md#fork-server-socket) before reading the cmdline.
    """
    if len(data) != CMD_INFO_HEAD.size:
        raise RemoteProtocolError(f"qrexec_cmd_info head must be 16 bytes, got {len(data)}")
    t, d, p, n = CMD_INFO_HEAD.unpack(data)
    if not 0 < n <= _MAX_CMD_INFO_LEN:
        raise RemoteProtocolError(f"invalid cmdline_len {n} in qrexec_cmd_info")
    return int(t), int(d), int(p), int(n)


