"""The programs' log line, written by `logging` (`setup`) and by `Logger` alike; RepeatLimited:
one line per cause per interval, then a count of the rest."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pyqrexec.system import log as log_module
from pyqrexec.system.log import REPEAT_INTERVAL, Logger, RepeatLimited, line_formatter

SRC = str(Path(__file__).resolve().parents[2] / "src")


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


# -- the programs' line, through `logging` and through `Logger` ----------------------------

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (?P<prog>[^\[]+)\[(?P<pid>\d+)\]: "
                  r"(?P<msg>.*)\n")


def test_logging_line_is_the_loggers_line(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths write the same bytes for the same moment, pid and message."""
    now = 1_700_000_000.123
    monkeypatch.setattr(log_module.time, "time", lambda: now)
    Logger("qrexec-daemon")("port 513 in use %s 100%")
    written = capsys.readouterr().err
    record = logging.LogRecord("pyqrexec.daemon.daemon", logging.INFO, __file__, 1,
                               "port 513 in use %s 100%", None, None)
    record.created = now
    assert line_formatter("qrexec-daemon").format(record) + "\n" == written
    assert LINE.fullmatch(written)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC}, timeout=30)


def test_setup_writes_the_line_from_any_module_logger() -> None:
    r = _run("import logging, os\n"
             "from pyqrexec.system.log import setup\n"
             "setup('qrexec-agent')\n"
             "logging.getLogger('pyqrexec.agent.agent').info('executed %s', 'x')\n"
             "logging.getLogger('pyqrexec.agent.agent').debug('not shown')\n"
             "pid = os.fork()\n"
             "if pid == 0:\n"
             "    logging.getLogger('pyqrexec.call.domain_handler').info('child')\n"
             "    os._exit(0)\n"
             "os.waitpid(pid, 0)\n"
             "print(os.getpid(), pid)\n")
    assert r.returncode == 0, r.stderr
    parent, child = r.stdout.split()
    lines = [LINE.fullmatch(line + "\n") for line in r.stderr.splitlines()]
    assert [(m["prog"], m["pid"], m["msg"]) for m in lines if m] == [
        ("qrexec-agent", parent, "executed x"), ("qrexec-agent", child, "child")]
    assert len(lines) == 2


def test_setup_bare_and_a_broken_stderr() -> None:
    r = _run("import logging, os\n"
             "from pyqrexec.system.log import setup\n"
             "setup('qrexec-policy-daemon', bare=True)\n"
             "logging.getLogger('x').info('qrexec: a: b -> c: allowed')\n"
             "os.close(2)\n"
             "logging.getLogger('x').info('nowhere to go')\n"
             "print('alive')\n")
    assert (r.returncode, r.stdout) == (0, "alive\n")
    assert r.stderr == "qrexec: a: b -> c: allowed\n"
