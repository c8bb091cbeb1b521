"""Diagnostics in the C programs' format: `YYYY-MM-DD HH:MM:SS.mmm PROGRAM[PID]: MESSAGE`."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

__all__ = ["Logger", "RepeatLimited", "REPEAT_INTERVAL", "stamp"]


def stamp(now: float | None = None) -> str:
    """A log line's time, local, to the millisecond: `YYYY-MM-DD HH:MM:SS.mmm`."""
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


class Logger:
    def __init__(self, program: str) -> None:
        self.program = program

    def __call__(self, message: str) -> None:
        line = f"{stamp()} {self.program}[{os.getpid()}]: {message}\n"
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


#: seconds during which a repeated line of one cause is counted instead of written
REPEAT_INTERVAL = 10.0


class RepeatLimited:
    """At most one line per cause per `interval`: the first at once, the repeats counted and
    written as one summary when the interval ends (and so on while they keep coming).

    A flood of one cause (a domain hammering a full port table) must not flood the log, yet
    the log must still say how much happened. `call_later(delay, fn)` schedules the end of an
    interval (asyncio's `loop.call_later` fits).
    """

    def __init__(self, log: Callable[[str], None],
                 call_later: Callable[[float, Callable[[], None]], object],
                 interval: float = REPEAT_INTERVAL) -> None:
        self.log = log
        self.call_later = call_later
        self.interval = interval
        #: cause -> repeats counted in its open interval
        self.open: dict[str, int] = {}

    def __call__(self, message: str, cause: str | None = None) -> None:
        key = message if cause is None else cause
        if key in self.open:
            self.open[key] += 1
            return
        self.log(message)
        self.open[key] = 0
        self.call_later(self.interval, lambda: self._interval_end(key, message))

    def _interval_end(self, key: str, message: str) -> None:
        count = self.open.pop(key, 0)
        if count:
            self.log(f"{message} (and {count} more like it in the last {self.interval:g} s)")
            self.open[key] = 0
            self.call_later(self.interval, lambda: self._interval_end(key, message))
