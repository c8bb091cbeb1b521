"""Where the programs qrexec-host runs write their logs: files under STATE/log/, or the
systemd journal when `up` itself logs to it (docs/qrexec-host.md, "Logs").

Every line in a file starts with the stamp the C programs use (`log.py`), so that
`qrexec-host logs` can merge the files in time order: the programs that do not stamp their
own lines (the policy daemon and agent, the manager) have them stamped as they pass through
the manager. In the journal, each program has its own identifier (`journalctl -t`), listed
in STATE/log/journal for `qrexec-host logs`.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from ..system.log import stamp

__all__ = ["STAMP_RE", "stamp", "stamped", "HostLog", "under_journal", "use_journal",
           "journal_socket", "open_sink", "message_of", "identifier", "JOURNAL_LIST",
           "stamps_needed"]

#: `YYYY-MM-DD HH:MM:SS.mmm ` at the start of a line (local time, as log.Logger writes it)
STAMP_RE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) ")
#: the identifiers used in the journal, one a line, beside the log files
JOURNAL_LIST = "journal"
_DEFAULT_JOURNAL = "/run/systemd/journal/stdout"

#: the journal's stdout-stream socket while `up` logs there; None: files
_journal: str | None = None


def stamped(program: str, message: str, pid: int | None = None) -> str:
    """`message` as log.Logger writes it for process `pid` (default this one), unless it
    carries a stamp already."""
    if STAMP_RE.match(message):
        return message
    return f"{stamp()} {program}[{os.getpid() if pid is None else pid}]: {message}"


_PROGRAM = re.compile(r"[^\s\[\]:]+\[\d+\]: ")


def message_of(line: str) -> str:
    """A logged line without the stamp and `PROGRAM[PID]: ` that `stamped` put before it."""
    m = STAMP_RE.match(line)
    if m is None:
        return line
    p = _PROGRAM.match(line, m.end())
    return line[p.end() if p else m.end():]


def identifier(log: Path) -> str:
    """The journal identifier of the program whose file log would be `log`: agent.NAME.log
    -> qrexec-agent.NAME, qrexec.NAME.log -> qrexec-daemon.NAME, policy-daemon.log ->
    qrexec-policy-daemon, qrexec-host.log -> qrexec-host."""
    stem = log.name.removesuffix(".log")
    if stem.startswith("agent."):
        return f"qrexec-agent.{stem[6:]}"
    if stem.startswith("qrexec.") and stem != "qrexec-host":
        return f"qrexec-daemon.{stem[7:]}"
    return stem if stem.startswith("qrexec") else f"qrexec-{stem}"


def under_journal(env: Mapping[str, str]) -> bool:
    """Whether our stderr is the journal: systemd says so in JOURNAL_STREAM (DEV:INODE of
    the stream it connected), which a program started by one of ours may merely inherit."""
    value = env.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def journal_socket(env: Mapping[str, str]) -> str:
    # (ext) another socket speaking the journal's stream protocol, for tests
    return env.get("QREXEC_HOST_JOURNAL_SOCKET") or _DEFAULT_JOURNAL


def use_journal(path: str | None, log_dir: Path) -> None:
    """From now on children log to the journal at `path` (None: to files)."""
    global _journal
    _journal = path
    listing = log_dir / JOURNAL_LIST
    if path is None:
        try:
            listing.unlink()
        except FileNotFoundError:
            pass
    else:
        listing.write_text("qrexec-host\n")


def stamps_needed() -> bool:
    """Lines passing through the manager get a stamp: the journal stamps its own."""
    return _journal is None


def open_sink(log: Path) -> BinaryIO:
    """Where a program whose file log is `log` writes: that file (appended), or a stream
    to the journal under its identifier (systemd's stdout-stream protocol: a header of
    identifier, unit, priority, level prefix, and three forwarding flags)."""
    if _journal is None:
        return open(log, "ab", buffering=0)  # noqa: SIM115 - the caller closes it
    ident = identifier(log)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(_journal)
        s.shutdown(socket.SHUT_RD)
        s.sendall(f"{ident}\n\n6\n0\n0\n0\n0\n".encode())
    except OSError:
        s.close()
        return open(log, "ab", buffering=0)  # noqa: SIM115 - no journal: the file
    listing = log.parent / JOURNAL_LIST
    try:
        known = listing.read_text().split()
    except OSError:
        known = []
    if ident not in known:
        with open(listing, "a") as f:
            f.write(ident + "\n")
    return s.makefile("wb", buffering=0)  # type: ignore[return-value]


class HostLog:
    """The manager's own lines: `qrexec-host: MESSAGE` on stderr for whoever runs `up` (the
    journal when systemd runs it), stamped in `path` for `qrexec-host logs`; with no
    `plain` stderr (`up --detach`, whose stderr is that file) stamped on stderr only."""

    def __init__(self, path: Path | None, plain: bool = True) -> None:
        self.path = path
        self.plain = plain

    def __call__(self, message: str) -> None:
        try:
            if self.plain:
                print(f"qrexec-host: {message}", file=sys.stderr, flush=True)
            else:
                print(stamped("qrexec-host", message), file=sys.stderr, flush=True)
            if self.path is not None:
                with open(self.path, "a") as f:
                    f.write(stamped("qrexec-host", message) + "\n")
        except (OSError, ValueError):
            pass
