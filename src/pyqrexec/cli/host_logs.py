"""`qrexec-host logs [NAME] [-f] [--since WHEN]`: the logs of the manager, the daemons, the
agents, the policy daemon and agent, as one time-ordered view (docs/qrexec-host.md, "Logs").

From the files under STATE/log/ (each line stamped, host/logsink.py), or from the journal
(`journalctl -t` for each identifier) when `up` logged there.
"""

from __future__ import annotations

import argparse
import heapq
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from ..host.logsink import JOURNAL_LIST, STAMP_RE
from ..policy.audit import AUDIT_FILE
from .qrexec_audit import add_arguments as audit_arguments
from .qrexec_audit import show

__all__ = ["parse_since", "logs_command", "merged", "source_of"]

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: how often -f looks for new lines (a reader's pace, not a test's)
_FOLLOW_POLL = 0.2


def parse_since(text: str, now: float | None = None) -> float:
    """Seconds since the epoch: `10m`, `2h`, `1d`, `30s`, `1w` ago (also `10m ago`, `-10m`);
    `now`, `today`, `yesterday`; an ISO 8601 time (local time without an offset, as the
    log lines are); or epoch seconds. ValueError otherwise."""
    now = time.time() if now is None else now
    words = text.strip().lower().removeprefix("-").removesuffix(" ago").strip()
    if m := _RELATIVE.fullmatch(words):
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    if words == "now":
        return now
    if words in ("today", "yesterday"):
        midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0,
                                                       microsecond=0).timestamp()
        return midnight - (86400 if words == "yesterday" else 0)
    try:
        return float(words)
    except ValueError:
        pass
    return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()


def source_of(path: Path) -> str:
    """agent.work.log -> agent.work: how a line's origin is shown."""
    return path.name.removesuffix(".log")


def _stamp_of(line: str) -> float | None:
    m = STAMP_RE.match(line)
    if m is None:
        return None
    try:
        return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
    except (ValueError, OverflowError):
        return None


_Entries = list[tuple[float, str]]


def _entries(path: Path, text: str, last: float | None) -> tuple[_Entries, float | None]:
    """(stamp, shown line) for each line of `text`: a line without a stamp (a traceback, a
    program's raw output) goes with the stamped line before it, or with the first one after
    it when there is none before."""
    source = source_of(path)
    out: list[tuple[float, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        t = _stamp_of(line)
        if t is None:
            if last is None:
                pending.append(line)
            else:
                out.append((last, f"{' ' * 23} {source}: {line}"))
            continue
        last = t
        m = STAMP_RE.match(line)
        assert m is not None
        shown = f"{m.group(1)}.{m.group(2)} {source}: {line[m.end():]}"
        out += [(t, f"{' ' * 23} {source}: {p}") for p in pending]
        pending = []
        out.append((t, shown))
    if pending:  # no stamp at all yet: the file's time
        try:
            t = path.stat().st_mtime
        except OSError:
            t = 0.0
        out += [(t, f"{' ' * 23} {source}: {p}") for p in pending]
    return out, last


def _logs(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.glob("*.log") if p.name != "policy-admin.log")


def _wanted(path: Path, name: str | None) -> str:
    """"all" lines of this file, "mentions" only those naming the domain, or "none"."""
    if name is None:
        return "all"
    stem = source_of(path)
    if stem in (f"agent.{name}", f"qrexec.{name}"):
        return "all"
    if stem.startswith(("agent.", "qrexec.")) and stem != "qrexec-host":
        return "none"
    return "mentions"


def _filter(entries: list[tuple[float, str]], want: str, name: str | None,
            since: float | None) -> list[tuple[float, str]]:
    if want == "none":
        return []
    if want == "mentions" and name is not None:
        word = re.compile(rf"(?<![A-Za-z0-9_.-]){re.escape(name)}(?![A-Za-z0-9_-])")
        entries = [e for e in entries if word.search(e[1].split(": ", 1)[-1])]
    return [e for e in entries if since is None or e[0] >= since]


def merged(log_dir: Path, name: str | None, since: float | None
           ) -> tuple[list[str], dict[Path, tuple[int, float | None]]]:
    """Every wanted line of every log, in time order (lines of one stamp keep their file's
    order); and where each file ended, for following it."""
    runs: list[list[tuple[float, int, str]]] = []
    ends: dict[Path, tuple[int, float | None]] = {}
    for i, path in enumerate(_logs(log_dir)):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        end = data.rfind(b"\n") + 1  # a half-written last line waits for its end
        entries, last = _entries(path, data[:end].decode(errors="replace"), None)
        ends[path] = (end, last)
        kept = _filter(entries, _wanted(path, name), name, since)
        runs.append([(t, i, line) for t, line in kept])
    return [line for _, _, line in heapq.merge(*runs, key=lambda e: (e[0], e[1]))], ends


def follow(log_dir: Path, name: str | None, since: float | None,
           ends: dict[Path, tuple[int, float | None]]) -> Iterator[str]:
    """New lines as they are written, files that appear included (a domain started later),
    each batch in time order."""
    while True:
        batch: list[tuple[float, str]] = []
        for path in _logs(log_dir):
            offset, last = ends.get(path, (0, None))
            try:
                size = path.stat().st_size
                if size < offset:  # truncated or replaced: from its start
                    offset, last = 0, None
                if size == offset:
                    continue
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1
            entries, last = _entries(path, data[:end].decode(errors="replace"), last)
            ends[path] = (offset + end, last)
            batch += _filter(entries, _wanted(path, name), name, since)
        batch.sort(key=lambda e: e[0])
        for _, line in batch:
            yield line
        if not batch:
            time.sleep(_FOLLOW_POLL)


def _journal(log_dir: Path, args: argparse.Namespace) -> int | None:
    """The view from the journal when `up` logged there: journalctl's own merge."""
    try:
        idents = (log_dir / JOURNAL_LIST).read_text().split()
    except OSError:
        return None
    if args.name is not None:
        idents = [i for i in idents if i in (f"qrexec-agent.{args.name}",
                                             f"qrexec-daemon.{args.name}")]
    argv = ["journalctl", "--no-pager", "-o", "short-iso-precise"]
    for ident in idents:
        argv += ["-t", ident]
    if args.since:
        since = parse_since(args.since)
        argv.append("--since=" + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)))
    if args.follow:
        argv.append("--follow")
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        print(f"qrexec-host: logs: {argv[0]}: {err.strerror} (the logs are in the journal: "
              f"journalctl {' '.join(argv[4:])})", file=sys.stderr)
    return 1


def logs_command(args: argparse.Namespace, state: Path) -> int:
    """`logs`: the merged view; `--files`: the files; `--audit`: the audit trail."""
    log_dir = state / "log"
    since: float | None = None
    if args.since:
        try:
            since = parse_since(args.since)
        except ValueError:
            print(f"qrexec-host: logs: bad --since {args.since!r} (ISO 8601 time, epoch "
                  "seconds, or 30s, 10m, 2h, 1d, 1w ago)", file=sys.stderr)
            return 2
    if args.audit:
        if since is not None and _RELATIVE.fullmatch(args.since.strip().lstrip("-")
                                                     .removesuffix(" ago").strip()):
            args.since = str(since)  # the trail's own --since reads epoch seconds
        return show(str(log_dir / AUDIT_FILE), args, sys.stdout)
    if not log_dir.is_dir():
        print(f"qrexec-host: no logs in {log_dir}", file=sys.stderr)
        return 1
    if args.files:
        for path in sorted(log_dir.iterdir()):
            print(path)
        return 0
    status = _journal(log_dir, args)
    if status is not None:
        return status
    lines, ends = merged(log_dir, args.name, since)
    try:
        for line in lines:
            print(line)
        if args.follow:
            sys.stdout.flush()
            for line in follow(log_dir, args.name, since, ends):
                print(line, flush=True)
    except BrokenPipeError:
        return 0
    return 0


def add_arguments(logs: argparse.ArgumentParser) -> None:
    logs.add_argument("name", nargs="?", metavar="NAME",
                      help="only NAME's agent and daemon, and the host's and policy's lines "
                      "naming NAME")
    logs.add_argument("--audit", action="store_true",
                      help="show the policy daemon's audit trail (options of qrexec-audit)")
    logs.add_argument("--files", action="store_true", help="list the log files")
    audit_arguments(logs, file=False)
    for action in logs._actions:
        if action.dest == "since":
            action.help = ("from this time: 10m, 2h, 1d, 30s, 1w (ago), today, yesterday, "
                           "an ISO 8601 time (local time unless an offset is given; UTC "
                           "with --audit), or epoch seconds")
        elif action.dest == "follow":
            action.help = "keep showing new lines (Ctrl-C ends)"
