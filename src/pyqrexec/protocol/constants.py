"""Wire constants of qrexec (docs/reference/protocol.md#constants,
docs/reference/protocol.md#message-types)."""

from __future__ import annotations

__all__ = [
    "MsgType",
    "PROTOCOL_VERSION",
    "CLIENT_PROTOCOL_VERSION",
    "MIN_AGENT_VERSION",
    "MIN_CLIENT_VERSION",
    "MIN_DATA_VERSION",
    "VCHAN_BASE_PORT",
    "FIRST_DATA_PORT",
    "LAST_DATA_PORT",
    "MAX_CLIENTS",
    "MAX_DATA_CHUNK_V2",
    "MAX_DATA_CHUNK_V3",
    "MAX_SERVICE_NAME_LEN",
    "MAX_QREXEC_CMD_LEN",
    "IDENT_SIZE",
    "HEADER_SIZE",
    "RPC_REQUEST_COMMAND",
    "NOGUI_CMD_PREFIX",
    "EXIT_SERVICE_NOT_FOUND",
    "EXIT_REQUEST_REFUSED",
    "EXIT_PROBLEM",
    "DOM0_NAMES",
    "chunk_limit",
]


class MsgType:
    """Message type numbers (qrexec.h): plain ints, where an IntEnum would cost the clients
    `enum`'s import on every call (docs/architecture.md#code-shape)."""

    #: caller -> service, raw bytes; len 0 = EOF
    DATA_STDIN = 0x190
    #: service -> caller, raw bytes; len 0 = EOF
    DATA_STDOUT = 0x191
    #: service -> caller, raw bytes; len 0 = EOF
    DATA_STDERR = 0x192
    #: service -> caller, i32 status
    DATA_EXIT_CODE = 0x193
    EXEC_CMDLINE = 0x200
    JUST_EXEC = 0x201
    SERVICE_CONNECT = 0x202
    SERVICE_REFUSED = 0x203
    #: version 2 trigger, fixed 128-byte struct
    TRIGGER_SERVICE = 0x210
    CONNECTION_TERMINATED = 0x211
    TRIGGER_SERVICE3 = 0x212
    TRIGGER_SERVICE4 = 0x213
    HELLO = 0x300


PROTOCOL_VERSION = 4
CLIENT_PROTOCOL_VERSION = 3
MIN_AGENT_VERSION = 2
MIN_CLIENT_VERSION = 3
MIN_DATA_VERSION = 2

VCHAN_BASE_PORT = 512
FIRST_DATA_PORT = 513
LAST_DATA_PORT = 768
MAX_CLIENTS = 256

MAX_DATA_CHUNK_V2 = 4096
MAX_DATA_CHUNK_V3 = 65536
#: size of the v3/v4 service-name field including its NUL
MAX_SERVICE_NAME_LEN = 65000
MAX_QREXEC_CMD_LEN = 65535
IDENT_SIZE = 32
HEADER_SIZE = 8

RPC_REQUEST_COMMAND = b"QUBESRPC"
NOGUI_CMD_PREFIX = b"nogui:"

EXIT_SERVICE_NOT_FOUND = 127
EXIT_REQUEST_REFUSED = 126
EXIT_PROBLEM = 125

#: the target names that mean dom0 itself (docs/reference/cli.md#qrexec-client-modes)
DOM0_NAMES = ("dom0", "@adminvm", "uuid:00000000-0000-0000-0000-000000000000")


def chunk_limit(version: int) -> int:
    """Largest data payload at a negotiated data-channel version
    (docs/reference/protocol.md#data-messages)."""
    return MAX_DATA_CHUNK_V2 if version < 3 else MAX_DATA_CHUNK_V3
