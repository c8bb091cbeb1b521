"""The audit trail's file: append-only, one write(2) per line, rotation-safe (docs/audit.md).

The file is opened with O_APPEND, so each line lands whole at the end even with several
writers (qubes-policy --revoke). At most every `CHECK_INTERVAL` seconds, before a write, the
path is compared with the open file (one stat): once it was moved or removed — rotated — a
new file is opened; SIGHUP reopens at once. Lines written between a move and the check go to
the moved file, so none is lost; only a file deleted outright loses what was written to it
in the meantime.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from ..policy.audit import encode, utc_ms

__all__ = ["AuditLog"]

FILE_MODE = 0o640
#: how often the path is checked for a rotation: a stat per line would cost more than the
#: line's write
CHECK_INTERVAL = 0.5


class AuditLog:
    def __init__(self, path: str, log: logging.Logger) -> None:
        self.path = path
        self.log = log
        self.fd = -1
        self._ident: tuple[int, int] | None = None
        self._failing = False
        self._checked = 0.0

    def reopen(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._ident = None
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         FILE_MODE)
        except OSError as err:
            self._failed(err)
            return
        st = os.fstat(fd)
        self.fd, self._ident = fd, (st.st_dev, st.st_ino)

    def _current(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._ident

    def write(self, record: Mapping[str, Any]) -> None:
        """Append `record` (its `time` is set here). A failure is logged, once until the
        next success; the call it describes goes on (the trail is not a gate)."""
        now = time.time()
        self._append(encode({"time": utc_ms(now), **record}), now)

    def write_fields(self, event: str, call: str, fields: str) -> None:
        """Append a record of `event` about `call` (a call id: hex digits) whose other fields
        are `fields` (`decision_fields`)."""
        now = time.time()
        self._append(
            f'{{"time":"{utc_ms(now)}","event":"{event}","call":"{call}",{fields}}}\n'.encode(),
            now,
        )

    def _append(self, line: bytes, now: float) -> None:
        if self.fd < 0 or not now - CHECK_INTERVAL < self._checked <= now:
            self._checked = now
            if self.fd < 0 or not self._current():
                self.reopen()
                if self.fd < 0:
                    return
        try:
            written = os.write(self.fd, line)
        except OSError as err:
            self._failed(err)
            return
        if written != len(line):  # disk full mid-line: the next line starts on its own
            os.write(self.fd, b"\n")
            self._failed(OSError(f"short write ({written} of {len(line)} bytes)"))
            return
        self._failing = False

    def _failed(self, err: OSError) -> None:
        if not self._failing:
            self.log.error("cannot write the audit trail %s: %s", self.path, err)
        self._failing = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
