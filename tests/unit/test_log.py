"""RepeatLimited: one line per cause per interval, then a count of the rest."""

from __future__ import annotations

from collections.abc import Callable

from pyqrexec.system.log import REPEAT_INTERVAL, RepeatLimited


class Clock:
    """Stands in for the event loop: the test runs the interval ends itself."""

    def __init__(self) -> None:
        self.due: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.due.append((delay, fn))

    def end_intervals(self) -> None:
        due, self.due = self.due, []
        for _, fn in due:
            fn()


def make() -> tuple[RepeatLimited, list[str], Clock]:
    lines: list[str] = []
    clock = Clock()
    return RepeatLimited(lines.append, clock.call_later, 5.0), lines, clock


def test_first_line_at_once_repeats_counted() -> None:
    log, lines, clock = make()
    for _ in range(260):
        log("port table full")
    assert lines == ["port table full"]
    assert [d for d, _ in clock.due] == [5.0]
    clock.end_intervals()
    assert lines == ["port table full",
                     "port table full (and 259 more like it in the last 5 s)"]
    # still coming: one summary per interval
    log("port table full")
    log("port table full")
    clock.end_intervals()
    assert lines[2:] == ["port table full (and 2 more like it in the last 5 s)"]
    # a quiet interval closes the cause: the next line is written at once again
    clock.end_intervals()
    assert clock.due == []
    log("port table full")
    assert lines[3:] == ["port table full"]


def test_single_line_gets_no_summary() -> None:
    log, lines, clock = make()
    log("once")
    clock.end_intervals()
    assert lines == ["once"] and clock.due == []


def test_causes_are_separate() -> None:
    log, lines, clock = make()
    log("domain 7 over its share", cause="share 7")
    log("domain 7 over its share again", cause="share 7")
    log("domain 9 over its share", cause="share 9")
    log("other")
    assert lines == ["domain 7 over its share", "domain 9 over its share", "other"]
    clock.end_intervals()
    assert lines[3:] == ["domain 7 over its share (and 1 more like it in the last 5 s)"]


def test_default_interval() -> None:
    clock = Clock()
    RepeatLimited(lambda line: None, clock.call_later)("x")
    assert clock.due[0][0] == REPEAT_INTERVAL == 10.0
