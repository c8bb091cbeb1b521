"""Grants on disk: a runtime JSON file, replaced atomically under a lock (docs/audit.md).

The policy daemon keeps the table in memory and re-reads the file when another program (qubes-
policy --revoke) replaced it; every change is made under the lock on the file's re-read
content, so two writers never undo each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator

from ..policy.grants import Grant, GrantTable

__all__ = ["GrantStore"]

FILE_MODE = 0o640


class GrantStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.table = GrantTable()
        self._seen: tuple[int, int, int, int] | None = None
        self.problem = ""  # why the file was not readable, last time it was read

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def refresh(self) -> list[Grant]:
        """Re-read the file if it changed; the grants that are gone from it."""
        seen = self._stat()
        if seen == self._seen:
            return []
        self._seen = seen
        old = self.table
        self.table = GrantTable()
        self.problem = ""
        if seen is not None:
            try:
                with open(self.path, "rb") as f:
                    self.table = GrantTable.loads(f.read())
            except (OSError, ValueError) as err:
                self.problem = str(err)  # a broken file grants nothing
        ids = {g.id for g in self.table}
        return [g for g in old if g.id not in ids]

    @contextlib.contextmanager
    def locked(self) -> Iterator[GrantTable]:
        """The table as on disk, under the lock; written back when the block ends."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.refresh()
            yield self.table
            self._write()
        finally:
            os.close(fd)

    def _write(self) -> None:
        directory, name = os.path.split(self.path)
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", dir=directory or ".")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), FILE_MODE)
                f.write(self.table.dumps())
            os.rename(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        self._seen = self._stat()
