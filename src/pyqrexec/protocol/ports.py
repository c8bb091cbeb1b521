"""The data-port table of one daemon (docs/daemon.md "Data ports"). Pure bookkeeping.

Ports 513..768 are handed out by the parity rule: peers with a higher domid than the daemon's
own get the even ports, the others (itself included) the odd ones, dom0 any. Within one half
the callers compete; `share` caps what one caller domain may hold there, so a caller that
floods a target leaves ports for everybody else who shares its half.
"""

from __future__ import annotations

import enum
from collections import Counter
from typing import Generic, TypeVar

from .constants import FIRST_DATA_PORT, LAST_DATA_PORT

__all__ = ["PortTable", "Busy", "HALF", "DEFAULT_SHARE", "check_share"]

T = TypeVar("T")
_SLOTS = LAST_DATA_PORT - FIRST_DATA_PORT + 1
#: ports in each half of the table
HALF = _SLOTS // 2
#: half of a half: whatever one caller does, as many ports again stay for the others
DEFAULT_SHARE = HALF // 2


class Busy(enum.Enum):
    """Why no port was handed out."""

    #: every port of the peer's half (of the table, for dom0) is held
    FULL = "full"
    #: the peer holds its share already
    SHARE = "share"


def check_share(value: int) -> int:
    """`value` as a share; ValueError outside 1..HALF (HALF = no cap beyond the half)."""
    if not 1 <= value <= HALF:
        raise ValueError(f"the per-caller port share must be 1..{HALF}, not {value}")
    return value


class PortTable(Generic[T]):
    """`used[i]` = peer domid of port 513+i; `notify[i]` = who to tell when it is released."""

    def __init__(self, own_domain: int, share: int = DEFAULT_SHARE) -> None:
        self.own = own_domain
        self.share = check_share(share)
        self.used: list[int | None] = [None] * _SLOTS
        self.notify: list[T | None] = [None] * _SLOTS
        self.held: Counter[int] = Counter()

    def allocate(self, peer: int, waiter: T | None) -> int | Busy:
        """A free port for a channel with `peer`, by the parity rule and the share."""
        if peer == 0:
            first, step = 0, 1
        elif peer > self.own:
            first, step = 1, 2
        else:
            first, step = 0, 2
        free = next((i for i in range(first, _SLOTS, step) if self.used[i] is None), None)
        if free is None:
            return Busy.FULL
        # dom0 is trusted and competes in no half
        if peer != 0 and self.held[peer] >= self.share:
            return Busy.SHARE
        self.used[free] = peer
        self.notify[free] = waiter
        self.held[peer] += 1
        return FIRST_DATA_PORT + free

    def release(self, peer: int, port: int) -> tuple[bool, T | None]:
        """Free `port` if it is held for `peer`: (released, waiter to notify)."""
        i = port - FIRST_DATA_PORT
        if not 0 <= i < _SLOTS or self.used[i] != peer:
            return False, None
        waiter = self.notify[i]
        self.used[i] = None
        self.notify[i] = None
        self.held[peer] -= 1
        if not self.held[peer]:
            del self.held[peer]
        return True, waiter

    def forget_waiter(self, waiter: T) -> None:
        """A waiter went away: keep the port, but nobody is to be told any more."""
        for i, w in enumerate(self.notify):
            if w is waiter:
                self.notify[i] = None

    def in_use(self) -> int:
        return sum(1 for u in self.used if u is not None)
