"""Protocol errors, split by whose fault it was (as h11 does)."""

from __future__ import annotations

__all__ = ["ProtocolError", "LocalProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base of every protocol violation."""


class LocalProtocolError(ProtocolError):
    """Our own side tried to produce something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""
