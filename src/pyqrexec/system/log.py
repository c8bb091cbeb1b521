"""Diagnostics in the C programs' format: `YYYY-MM-DD HH:MM:SS.mmm PROGRAM[PID]: MESSAGE`
(docs/architecture.md#environment-and-logging).

Every program logs through the standard library's `logging`: modules log to
`logging.getLogger(__name__)` and each program's `cli/` main calls `setup` once. The two
per-call clients are the exception: importing `logging` costs them ~3 ms and pulls in `re`,
so they write with `Logger`, which gives the same line. The modules on their path (the relay,
the daemon socket, the dom0 service side) therefore take a plain `log(message)` callable, which
both a `Logger` and a logger's `info` method are.

On the clients' start-up path: `logging` is imported only by `setup`.
"""

from __future__ import annotations

import os
import sys
import time

#: on a client's start-up path: `typing` would cost ~3 ms, `collections.abc` ~1 ms (mypy
#: takes it as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

__all__ = ["Logger", "RepeatLimited", "REPEAT_INTERVAL", "stamp", "setup", "line_formatter"]


def stamp(now: float | None = None) -> str:
    """A log line's time, local, to the millisecond: `YYYY-MM-DD HH:MM:SS.mmm`."""
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


class Logger:
    """`log(message)` writing one line in the programs' format to stderr, without `logging`
    (for the two per-call clients)."""

    def __init__(self, program: str) -> None:
        self.program = program

    def __call__(self, message: str) -> None:
        line = f"{stamp()} {self.program}[{os.getpid()}]: {message}\n"
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def line_formatter(program: str) -> logging.Formatter:
    """A `logging.Formatter` for `Logger`'s line: `stamp`, the program's name, the process's
    pid (a forked handler's own), the message (and a traceback, if any, on the lines after)."""
    import logging

    class _LineFormatter(logging.Formatter):
        def formatTime(self, record: logging.LogRecord,  # noqa: N802 - logging's name
                       datefmt: str | None = None) -> str:
            return stamp(record.created)

    return _LineFormatter("%(asctime)s " + program.replace("%", "%%")
                          + "[%(process)d]: %(message)s")


def setup(program: str, *, bare: bool = False, syslog: bool = False) -> None:
    """The one logging set-up, called by every program's `cli/` main (but the two per-call
    clients'): records of INFO and above, one line each on stderr in `Logger`'s format.

    `bare`: the message alone, as the policy programs have always written it (their messages
    start with `qrexec: ` themselves); `syslog`: to `/dev/log` as `PROGRAM: MESSAGE` when it
    exists (qrexec-policy-exec, run by the daemon for each request). A failing write is
    dropped: a log line is never worth a program's life.
    """
    import logging

    handler: logging.Handler
    if syslog and os.path.exists("/dev/log"):
        # only here: logging.handlers brings pickle, queue and threading into a resident program
        import logging.handlers

        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter(program.replace("%", "%%") + ": %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s") if bare
                             else line_formatter(program))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.raiseExceptions = False


#: seconds during which a repeated line of one cause is counted instead of written
REPEAT_INTERVAL = 10.0


class RepeatLimited:
    """At most one line per cause per `interval`: the first at once, the repeats counted and
    written as one summary when the interval ends (and so on while they keep coming).

    A flood of one cause (a domain hammering a full port table) must not flood the log, yet
    the log must still say how much happened. `log` is a `log(message)` callable (a logger's
    `info`, say); `call_later(delay, fn)` schedules the end of an interval (asyncio's
    `loop.call_later` fits).
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
