"""Control-channel message policing (docs/reference/protocol.md#trigger-validation,
docs/reference/protocol.md#refusals).

The daemon distrusts the agent: `check_agent_header` says whether a header is acceptable at
all (a violation is fatal for the daemon), and `validate_trigger` turns an accepted trigger
payload into a sanitised `ServiceRequest` or a `Refusal` carrying the raw ident to echo.
The agent trusts the daemon a little more: `check_daemon_header` is its side.
"""

from __future__ import annotations

from .constants import (
    FIRST_DATA_PORT,
    LAST_DATA_PORT,
    MAX_QREXEC_CMD_LEN,
    MAX_SERVICE_NAME_LEN,
    MsgType,
)
from .errors import RemoteProtocolError
from .idents import DOMAIN_EXTRA, SERVICE_EXTRA, sanitize_name, valid_ident
from .messages import (
    ExecParams,
    Trigger2,
    Trigger3,
    Trigger4,
    field_str,
    parse_exec,
    parse_exec_params_only,
)
from .records import record

__all__ = [
    "ServiceRequest",
    "Refusal",
    "check_agent_header",
    "validate_trigger",
    "check_daemon_header",
    "check_client_header",
    "parse_client_request",
    "check_trigger_socket_header",
    "parse_connection_terminated",
    "valid_data_port",
]

_TRIGGER2_LEN = 128
_TRIGGER3_HEAD = 96
_TRIGGER4_HEAD = 160


@record
class ServiceRequest:
    """A trigger that passed validation; names are sanitised text."""

    service: str
    target: str
    #: None below version 4 (no source field), "" when the agent gave none
    source: str | None
    #: the 32-byte ident field as received (valid)
    ident: bytes


@record
class Refusal:
    """Answer with MSG_SERVICE_REFUSED carrying `ident` (the raw received bytes)."""

    ident: bytes
    reason: str


def valid_data_port(port: int) -> bool:
    return FIRST_DATA_PORT <= port <= LAST_DATA_PORT


def parse_connection_terminated(payload: bytes) -> tuple[int, int]:
    """(domain, port) of a CONNECTION_TERMINATED payload; a port outside 513..768 is fatal
    for the daemon (docs/reference/protocol.md#data-ports,
    docs/reference/protocol.md#trigger-validation)."""
    domain, port = parse_exec_params_only(payload)
    if not valid_data_port(port):
        raise RemoteProtocolError(f"Invalid port in MSG_CONNECTION_TERMINATED ({port})")
    return domain, port


def check_agent_header(msgtype: int, length: int, version: int) -> None:
    """Raise RemoteProtocolError when the daemon must exit over this header
    (docs/reference/protocol.md#trigger-validation table)."""
    if msgtype == MsgType.TRIGGER_SERVICE:
        ok = version == 2 and length == _TRIGGER2_LEN
    elif msgtype == MsgType.TRIGGER_SERVICE3:
        ok = version >= 3 and _TRIGGER3_HEAD < length <= _TRIGGER3_HEAD + MAX_SERVICE_NAME_LEN
    elif msgtype == MsgType.TRIGGER_SERVICE4:
        ok = version >= 4 and _TRIGGER4_HEAD < length <= _TRIGGER4_HEAD + MAX_SERVICE_NAME_LEN
    elif msgtype == MsgType.CONNECTION_TERMINATED:
        ok = length == 8
    else:
        raise RemoteProtocolError(f"unknown mesage type {msgtype:#x}")
    if not ok:
        raise RemoteProtocolError(
            f"invalid message type {msgtype:#x} with length {length} at protocol version {version}"
        )


def _force_nul(field: bytes) -> bytes:
    return field[:-1] + b"\0"


def _name_field(service: bytes) -> tuple[bytes | None, str]:
    """Check a v3/v4 service field: only NUL at its last byte
    (docs/reference/protocol.md#trigger-validation step 5)."""
    nul = service.find(b"\0")
    if nul < 0:
        return None, "Service name not NUL-terminated"
    if nul != len(service) - 1:
        return None, f"Service name contains NUL byte at offset {nul}"
    return service[:-1], ""


def validate_trigger(msgtype: int, payload: bytes, version: int) -> ServiceRequest | Refusal:
    """docs/reference/protocol.md#trigger-validation steps 1-6 for a trigger message.

    The header is checked again (`check_agent_header`), so a message the daemon must exit
    over, including a non-trigger type, raises RemoteProtocolError here too.
    """
    check_agent_header(msgtype, len(payload), version)
    if msgtype == MsgType.CONNECTION_TERMINATED:
        raise RemoteProtocolError("CONNECTION_TERMINATED is not a trigger message")
    source: bytes | None = None
    if msgtype == MsgType.TRIGGER_SERVICE:
        t2 = Trigger2.parse(payload)
        ident = t2.ident
        target = _force_nul(t2.target_domain).replace(b"$", b"@")
        service_field: bytes | None = field_str(_force_nul(t2.service_name))
        error = ""
    elif msgtype == MsgType.TRIGGER_SERVICE3:
        t3 = Trigger3.parse(payload)
        ident, target = t3.ident, _force_nul(t3.target_domain)
        service_field, error = _name_field(t3.service_name)
    else:  # TRIGGER_SERVICE4, the only type left after check_agent_header
        t4 = Trigger4.parse(payload)
        ident, target = t4.ident, _force_nul(t4.target_domain)
        source = _force_nul(t4.source_domain)
        service_field, error = _name_field(t4.service_name)
    if not valid_ident(ident):
        return Refusal(ident, "invalid ident")
    if service_field is None:
        return Refusal(ident, error)
    service = sanitize_name(service_field, SERVICE_EXTRA)
    if not service or service.startswith(b"+"):
        return Refusal(ident, "empty service name or service name starting with +")
    target_s = field_str(sanitize_name(target, DOMAIN_EXTRA))
    source_s = None if source is None else field_str(sanitize_name(source, DOMAIN_EXTRA))
    return ServiceRequest(
        service.decode("ascii"),
        target_s.decode("ascii"),
        None if source_s is None else source_s.decode("ascii"),
        ident,
    )


def check_daemon_header(msgtype: int, length: int) -> None:
    """Agent side: raise RemoteProtocolError when the agent must exit
    (docs/reference/protocol.md#refusals)."""
    if msgtype in (MsgType.EXEC_CMDLINE, MsgType.JUST_EXEC, MsgType.SERVICE_CONNECT):
        if length <= 8:
            raise RemoteProtocolError(f"exec message {msgtype:#x} too short ({length})")
    elif msgtype == MsgType.SERVICE_REFUSED:
        if length != 32:
            raise RemoteProtocolError(f"SERVICE_REFUSED with length {length}")
    else:
        raise RemoteProtocolError(f"unknown message type {msgtype:#x} from daemon")


_CLIENT_TYPES = (MsgType.EXEC_CMDLINE, MsgType.JUST_EXEC, MsgType.SERVICE_CONNECT)


def check_client_header(msgtype: int, length: int) -> None:
    """Daemon side of its Unix socket (docs/reference/protocol.md#client-socket step 2): type
    0x200-0x202, 8 < len <= 65535.

    RemoteProtocolError means: close the connection, forward nothing.
    """
    if msgtype not in _CLIENT_TYPES:
        raise RemoteProtocolError(f"invalid message type {msgtype:#x} from client")
    if not 8 < length <= MAX_QREXEC_CMD_LEN:
        raise RemoteProtocolError(f"invalid message length {length} from client")


def parse_client_request(payload: bytes) -> ExecParams:
    """A client request whose header passed `check_client_header`
    (docs/reference/protocol.md#client-socket step 2): the payload
    must end with NUL and a non-zero port must be a data port. Ident matching and the
    allocation of port 0 are the daemon's business."""
    request = parse_exec(payload)
    if not request.payload.endswith(b"\0"):
        raise RemoteProtocolError("client request not NUL-terminated")
    if request.connect_port != 0 and not valid_data_port(request.connect_port):
        raise RemoteProtocolError(f"invalid port {request.connect_port} from client")
    return request


def check_trigger_socket_header(msgtype: int, length: int) -> None:
    """Agent side of its trigger socket (docs/reference/protocol.md#trigger-socket):
    TRIGGER_SERVICE4 with 160 < len <= 65160."""
    if msgtype != MsgType.TRIGGER_SERVICE4 or not (
        _TRIGGER4_HEAD < length <= _TRIGGER4_HEAD + MAX_SERVICE_NAME_LEN
    ):
        raise RemoteProtocolError(
            "Invalid request received from qrexec-client-vm, is it outdated?"
        )
