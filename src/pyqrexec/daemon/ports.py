"""The data-port table of one daemon (protocol.md §8). Pure bookkeeping."""

from __future__ import annotations

from typing import Generic, TypeVar

from ..protocol.constants import FIRST_DATA_PORT, LAST_DATA_PORT

__all__ = ["PortTable"]

T = TypeVar("T")
_SLOTS = LAST_DATA_PORT - FIRST_DATA_PORT + 1


class PortTable(Generic[T]):
    """`used[i]` = peer domid of port 513+i; `notify[i]` = who to tell when it is released."""

    def __init__(self, own_domain: int) -> None:
        self.own = own_domain
        self.used: list[int | None] = [None] * _SLOTS
        self.notify: list[T | None] = [None] * _SLOTS

    def allocate(self, peer: int, waiter: T | None) -> int | None:
        """A free port for a channel with `peer`, by the parity rule; None when full."""
        if peer == 0:
            first, step = 0, 1
        elif peer > self.own:
            first, step = 1, 2
        else:
            first, step = 0, 2
        for i in range(first, _SLOTS, step):
            if self.used[i] is None:
                self.used[i] = peer
                self.notify[i] = waiter
                return FIRST_DATA_PORT + i
        return None

    def release(self, peer: int, port: int) -> tuple[bool, T | None]:
        """Free `port` if it is held for `peer`: (released, waiter to notify)."""
        i = port - FIRST_DATA_PORT
        if not 0 <= i < _SLOTS or self.used[i] != peer:
            return False, None
        waiter = self.notify[i]
        self.used[i] = None
        self.notify[i] = None
        return True, waiter

    def forget_waiter(self, waiter: T) -> None:
        """A waiter went away: keep the port, but nobody is to be told any more."""
        for i, w in enumerate(self.notify):
            if w is waiter:
                self.notify[i] = None

    def in_use(self) -> int:
        return sum(1 for u in self.used if u is not None)
