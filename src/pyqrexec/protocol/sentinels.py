"""Named values of the protocol core that are compared by identity, in the spirit of h11's
sentinels.

The core is on the start-up path of `qrexec-client` and `qrexec-client-vm`, where importing
`enum` alone costs about 2.5 ms of every call (docs/architecture.md#code-shape); a sentinel
is a plain object with a name, which is all these values need.
"""

from __future__ import annotations

__all__ = ["Sentinel"]


class Sentinel:
    """One named value; its class says which kind, `is` says which one."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    # a copy is the same object, as an enum member's is: identity is what a sentinel means
    def __copy__(self) -> Sentinel:
        return self

    def __deepcopy__(self, memo: object) -> Sentinel:
        return self
