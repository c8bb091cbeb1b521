"""qrexec-audit: read the policy daemon's audit trail (docs/audit.md).

    qrexec-audit [--file PATH] [--source NAME] [--target NAME] [--service NAME]
                 [--decision allow|deny] [--event EVENT] [--call ID]
                 [--since TIME] [--until TIME] [--json] [--follow]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from ..policy.audit import audit_path, parse_records, parse_time
from . import entry

__all__ = ["main", "run"]

_POLL = 0.5


def parser(prog: str = "qrexec-audit") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Show the qrexec audit trail.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser, file: bool = True) -> None:
    if file:
        p.add_argument("--file", help="the trail (default $QREXEC_LOG_DIR/qrexec-audit.jsonl)")
    p.add_argument("--source", help="only calls from this qube")
    p.add_argument("--target", help="only calls to this qube (as requested or resolved)")
    p.add_argument("--service", help="only this service (SERVICE or SERVICE+ARG)")
    p.add_argument("--decision", choices=("allow", "deny"), help="only such decisions")
    p.add_argument("--event", help="only records of this event (decision, end, refused, "
                   "grant-created, grant-expired, grant-revoked)")
    p.add_argument("--call", help="only the records of this call id")
    p.add_argument("--since", help="from this time (ISO 8601, UTC unless given; or epoch s)")
    p.add_argument("--until", help="up to this time")
    p.add_argument("--json", action="store_true", help="the records as JSON lines")
    p.add_argument("--follow", "-f", action="store_true", help="wait for new records")


class Filter:
    """Whether a record matches every filter option given; each option is one check."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._parse_time = parse_time
        self.since = parse_time(args.since) if args.since else None
        self.until = parse_time(args.until) if args.until else None
        checks: list[Callable[[dict[str, Any]], bool]] = []
        if args.source is not None:
            checks.append(lambda r: args.source in (r.get("source"), r.get("requested_source")))
        if args.target is not None:
            checks.append(lambda r: args.target in (r.get("target"), r.get("intended_target")))
        if args.service is not None:
            checks.append(lambda r: args.service in (
                r.get("service"), f"{r.get('service')}{r.get('argument') or ''}"))
        for key in ("decision", "event", "call"):
            if getattr(args, key) is not None:
                checks.append(self._equal(key, getattr(args, key)))
        if self.since is not None or self.until is not None:
            checks.append(self._in_time)
        self.checks = checks

    @staticmethod
    def _equal(key: str, wanted: object) -> Callable[[dict[str, Any]], bool]:
        return lambda r: r.get(key) == wanted

    def _in_time(self, r: dict[str, Any]) -> bool:
        try:
            t = self._parse_time(str(r.get("time")))
        except ValueError:
            return False
        return not ((self.since is not None and t < self.since)
                    or (self.until is not None and t > self.until))

    def __call__(self, r: dict[str, Any]) -> bool:
        return all(check(r) for check in self.checks)


def _shown(value: object) -> str:
    """A value for the table: names come from domains, so nothing unprintable is shown raw."""
    if value is None:
        return "-"
    text = str(value)
    if text.isprintable() and text.isascii() and " " not in text:
        return text
    return json.dumps(text)


def row(r: dict[str, Any]) -> str:
    event = r.get("event")
    head = [_shown(r.get("time")), _shown(event), _shown(r.get("call") or r.get("grant"))]
    call = f"{_shown(r.get('service'))}{_shown(r.get('argument') or '')}"
    if event == "decision":
        target = r.get("target") or r.get("intended_target")
        by = f"grant {r['grant']}" if r.get("grant") else _shown(r.get("rule"))
        asked = f" asked={_shown(r.get('answer'))}" if r.get("asked") else ""
        rest = [f"{_shown(r.get('source'))} -> {_shown(target)}", call,
                _shown(r.get("decision")), by + asked]
    elif event == "end":
        rest = [f"{_shown(r.get('source'))} -> {_shown(r.get('target'))}", call,
                f"{r.get('scope')} {r.get('duration_ms')} ms status {r.get('status')}"]
    elif event == "refused":
        rest = [_shown(r.get("reason")), _shown(r.get("request"))]
    else:
        until = r.get("expires") or "halt of " + ",".join(r.get("halts") or [])
        rest = [f"{_shown(r.get('source'))} -> {_shown(r.get('target'))}", call,
                _shown(r.get("answer")), f"until {_shown(until)}", _shown(r.get("reason"))]
    return "  ".join(head + rest)


class _Tail:
    """One open file of the trail and the start of a line not yet ended in it."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "rb")  # noqa: SIM115 - closed by the caller
        self.ident = os.fstat(self.file.fileno()).st_ino
        self.partial = b""

    def lines(self) -> Iterator[bytes]:
        for line in self.file:
            if line.endswith(b"\n"):
                yield self.partial + line
                self.partial = b""
            else:
                self.partial += line


#: how long a moved file is still read after the follower turned to the new one: the daemon
#: writes to it until it notices the move (at most half a second later, docs/audit.md)
_MOVED_GRACE = 2.0


def _lines(path: str, follow: bool) -> Iterator[bytes]:
    """The file's whole lines; with `follow`, new ones as they come, across rotations."""
    tail = _Tail(path)
    moved: list[tuple[_Tail, float]] = []  # rotated away, and until when they are read
    try:
        while True:
            yield from tail.lines()
            if not follow:
                return
            for old, until in list(moved):
                yield from old.lines()
                if time.monotonic() > until:
                    moved.remove((old, until))
                    old.file.close()
            time.sleep(_POLL)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_ino != tail.ident or st.st_size < tail.file.tell():  # rotated
                # what the daemon wrote to the moved file first, then the new file's
                yield from tail.lines()
                moved.append((tail, time.monotonic() + _MOVED_GRACE))
                tail = _Tail(path)
    finally:
        tail.file.close()
        for old, _ in moved:
            old.file.close()


def show(path: str, args: argparse.Namespace, out: TextIO) -> int:
    try:
        keep = Filter(args)
    except ValueError as err:
        print(f"qrexec-audit: bad time: {err}", file=sys.stderr)
        return 2
    try:
        for record in parse_records(_lines(path, args.follow)):
            if keep(record):
                out.write(json.dumps(record) if args.json else row(record))
                out.write("\n")
                if args.follow:
                    out.flush()
    except FileNotFoundError:
        print(f"qrexec-audit: {path}: no audit trail", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return show(args.file or audit_path(os.environ), args, sys.stdout)


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
