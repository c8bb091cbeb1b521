"""What crossed one call's relay, counted by the relay itself.

A module of its own so that an idle qrexec-daemon, whose call audit reads these counts, does
not load the relay (about 0.4 MiB resident) before a call to dom0 needs it.
"""

from __future__ import annotations

__all__ = ["Traffic"]


class Traffic:
    """The payload bytes of a call's data messages that crossed a relay, each way: counted
    here, not taken from either side's word (the audit trail's `bytes_in`/`bytes_out`)."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        #: payload of the stdin/stdout data messages read from the channel
        self.received = 0
        #: payload of the data messages queued for the channel from local sources
        self.sent = 0
