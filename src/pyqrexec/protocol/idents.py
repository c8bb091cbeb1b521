"""Request idents and name sanitising (docs/reference/protocol.md#trigger-validation steps 1-3,
docs/reference/protocol.md#request-idents)."""

from __future__ import annotations

from .constants import IDENT_SIZE
from .errors import LocalProtocolError

__all__ = [
    "valid_ident",
    "sanitize_name",
    "agent_ident",
    "parse_agent_ident",
    "SERVICE_EXTRA",
    "DOMAIN_EXTRA",
]

_IDENT_CHARS = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.- ")
_SAFE = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.-")
SERVICE_EXTRA = frozenset(b"+")
DOMAIN_EXTRA = frozenset(b"@:")
#: `SOCKET` and 1 to 10 ASCII digits (no `re`: it is not on the clients' start-up path)
_SOCKET_PREFIX = b"SOCKET"
_DIGITS = frozenset(b"0123456789")
_INT_MAX = 2**31 - 1


def valid_ident(field: bytes) -> bool:
    """A 32-byte ident field as the daemon accepts it
    (docs/reference/protocol.md#request-idents)."""
    if len(field) != IDENT_SIZE:
        return False
    nul = field.find(b"\0")
    if nul < 0:
        return False
    if any(b not in _IDENT_CHARS for b in field[:nul]):
        return False
    return not field[nul:].strip(b"\0")


def sanitize_name(field: bytes, extra: frozenset[int] = frozenset()) -> bytes:
    """Replace every byte before the first NUL outside `[A-Za-z0-9_.-]` + `extra` by `_`.

    The field keeps its length; bytes from the first NUL on are left alone.
    """
    nul = field.find(b"\0")
    end = len(field) if nul < 0 else nul
    allowed = _SAFE | extra
    head = bytes(b if b in allowed else 0x5F for b in field[:end])
    return head + field[end:]


def agent_ident(n: int) -> bytes:
    """The zero-filled ident field the agent writes for trigger connection `n`."""
    text = f"SOCKET{n}".encode()
    if n < 0 or len(text) >= IDENT_SIZE:
        raise LocalProtocolError(f"SOCKET{n} does not fit the {IDENT_SIZE}-byte ident field")
    return text.ljust(IDENT_SIZE, b"\0")


def parse_agent_ident(field: bytes) -> int | None:
    """`n` of a `SOCKET<n>` ident, or None when the field is not one."""
    nul = field.find(b"\0")
    text = field if nul < 0 else field[:nul]
    digits = text[len(_SOCKET_PREFIX):]
    if (not text.startswith(_SOCKET_PREFIX) or not 1 <= len(digits) <= 10
            or not _DIGITS.issuperset(digits) or int(digits) > _INT_MAX):
        return None
    return int(digits)

