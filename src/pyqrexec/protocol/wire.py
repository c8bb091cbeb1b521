"""The fixed-layout pieces every channel uses: header, HELLO, exec_params, exit code.

Split from `messages` so that the client programs' start-up path imports no dataclasses.
"""

from __future__ import annotations

# `struct` is only this C module re-exported; one module fewer on the clients' start-up path
from _struct import Struct

from .constants import MsgType
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "HEADER",
    "pack_header",
    "unpack_header",
    "hello",
    "parse_hello",
    "fixed_field",
    "field_str",
    "EXEC_HEAD",
    "pack_exec_params",
    "parse_exec_params_only",
    "pack_exec",
    "pack_exit_code",
    "exit_code_payload",
    "parse_exit_code",
]

HEADER = Struct("<II")
_U32 = Struct("<I")
_I32 = Struct("<i")
#: `exec_params` (docs/reference/protocol.md#exec_params): domain and port ahead of an exec-style
#: payload
EXEC_HEAD = Struct("<II")
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


def pack_exec_params(domain: int, port: int) -> bytes:
    return EXEC_HEAD.pack(domain, port)


def parse_exec_params_only(data: bytes) -> tuple[int, int]:
    """The 8-byte `exec_params` written back to qrexec-client-vm (no header)."""
    if len(data) != EXEC_HEAD.size:
        raise RemoteProtocolError(f"exec_params must be 8 bytes, got {len(data)}")
    d, p = EXEC_HEAD.unpack(data)
    return int(d), int(p)


def pack_exec(msgtype: int, domain: int, port: int, payload: bytes) -> bytes:
    body = EXEC_HEAD.pack(domain, port) + payload
    return pack_header(msgtype, len(body)) + body


def pack_exit_code(status: int) -> bytes:
    return HEADER.pack(MsgType.DATA_EXIT_CODE, 4) + exit_code_payload(status)


def exit_code_payload(status: int) -> bytes:
    return _I32.pack(status)


def parse_exit_code(payload: bytes) -> int:
    """Status of an EXIT_CODE payload: first 4 bytes as i32, 255 if shorter
    (docs/reference/protocol.md#data-messages)."""
    if len(payload) < 4:
        return 255
    (status,) = _I32.unpack_from(payload)
    return int(status)
