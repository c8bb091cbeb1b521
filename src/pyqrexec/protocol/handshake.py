"""HELLO negotiation rules per channel (docs/reference/protocol.md#hello)."""

from __future__ import annotations

from .constants import (
    CLIENT_PROTOCOL_VERSION,
    MIN_AGENT_VERSION,
    MIN_CLIENT_VERSION,
    MIN_DATA_VERSION,
    PROTOCOL_VERSION,
    MsgType,
)
from .errors import RemoteProtocolError

__all__ = ["IncompatibleVersion", "own_max_version", "negotiate", "negotiate_control",
           "negotiate_data", "check_client_hello", "check_hello_header"]


class IncompatibleVersion(RemoteProtocolError):
    """The peer's HELLO is well-formed, but its version is below what the channel needs."""


def check_hello_header(msgtype: int, length: int) -> None:
    """The first message of a channel must be a HELLO with len 4 (docs/reference/protocol.md#hello);
    as a header check
    (framing.MessageReader) it refuses anything else before its payload is read."""
    if msgtype != MsgType.HELLO or length != 4:
        raise RemoteProtocolError(f"expected HELLO, got type {msgtype:#x} len {length}")


def own_max_version(setting: str | None) -> tuple[int, str | None]:
    """Own maximum version from `QREXEC_MAX_PROTOCOL_VERSION` and a warning, if any.

    `setting` is None when the variable is unset. Any other value than 2, 3, 4, the empty
    string included, is ignored with a warning (docs/reference/protocol.md#conventions).
    """
    if setting is None:
        return PROTOCOL_VERSION, None
    if setting in ("2", "3", "4"):
        return int(setting), None
    return PROTOCOL_VERSION, f"ignoring invalid QREXEC_MAX_PROTOCOL_VERSION={setting!r}"


def negotiate(peer: int, own: int, minimum: int) -> int:
    version = min(peer, own)
    if version < minimum:
        raise IncompatibleVersion(
            f"Incompatible agent protocol version (remote {peer}, local {own})"
        )
    return version


def negotiate_control(peer: int, own: int = PROTOCOL_VERSION) -> int:
    return negotiate(peer, own, MIN_AGENT_VERSION)


def negotiate_data(peer: int, own: int = PROTOCOL_VERSION) -> int:
    return negotiate(peer, own, MIN_DATA_VERSION)


def check_client_hello(peer: int) -> int:
    """Daemon-socket HELLO: version >= 3, no upper bound; the channel runs at version 3."""
    if peer < MIN_CLIENT_VERSION:
        raise RemoteProtocolError(f"client protocol version {peer} < {MIN_CLIENT_VERSION}")
    return CLIENT_PROTOCOL_VERSION
