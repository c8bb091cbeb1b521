"""Argument helpers shared by the C-style client programs (kept import-light)."""

from __future__ import annotations

__all__ = ["UsageError", "NOT_A_NUMBER", "TRAILING_JUNK", "c_number", "once"]

NOT_A_NUMBER = "does not start with an ASCII digit"
TRAILING_JUNK = "trailing junk"


class UsageError(Exception):
    """Bad command line: print the message on stderr and exit with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def c_number(text: str) -> int:
    """C `strtol`/`strtoul` with base 0 (`0x` hex, leading-0 octal) as upstream checks it:
    the text must start with a digit and contain nothing after the number. ValueError's
    message is `NOT_A_NUMBER` or `TRAILING_JUNK`."""
    if not text[:1].isdigit():
        raise ValueError(NOT_A_NUMBER)
    t = text.lower()
    base = 16 if t.startswith("0x") else 8 if t.startswith("0") and len(t) > 1 else 10
    try:
        return int(t, base)
    except ValueError as err:
        raise ValueError(TRAILING_JUNK) from err


def once(already: object, option: str) -> None:
    """Options that may be given once: a second one is a usage error (exit 2)."""
    if already:
        raise UsageError(2, f"{option} given twice")
