"""Policy change detection with inotify (docs/reference/policy.md#reloading), `PolicyWatch`'s stat
walk as fallback.

What is watched, all with `CHANGES` (no open/read events, so loading never wakes the watch):

- every directory under the policy and legacy directories, recursively, and every entry's inode;
- every file read or probed and every directory listed while loading (includes outside the
  directories too), and their inodes;
- for each of these paths, every directory entry that resolving it looks up — each ancestor
  directory with the name looked up in it, symlinks followed component by component — so that
  a rename, a replaced symlink or a path that does not exist yet is noticed.

Why a change finished before a request is seen by it: the kernel queues an inotify event inside
the system call that makes the change (write, rename, unlink, chmod, …), before that call returns.
A request that arrives after the change finished therefore finds the event queued when the engine
reads the descriptor after receiving the request. A full queue (`IN_Q_OVERFLOW`), a dropped watch
(`IN_IGNORED`, unmount) or a watch that could not be placed counts as a change: full reload.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Sequence

from ..policy.loaders import DiskFiles
from ..system.inotify import CHANGES, Inotify, InotifyUnavailable

__all__ = ["InotifyWatch", "lookups"]

_MAX_SYMLINKS = 40  # as the kernel's ELOOP limit


def lookups(path: str) -> tuple[list[tuple[str, str]], str | None]:
    """The (directory, name) lookups resolving absolute `path` performs, symlinks followed,
    and what it resolves to (None when a component is missing or is not a directory)."""
    pending = [p for p in reversed(path.split("/")) if p not in ("", ".")]
    current = "/"
    pairs: list[tuple[str, str]] = []
    links = 0
    while pending:
        name = pending.pop()
        if name == "..":
            current = posixpath.dirname(current)
            continue
        pairs.append((current, name))
        full = posixpath.join(current, name)
        try:
            st = os.lstat(full)
        except OSError:
            return pairs, None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                return pairs, None
            try:
                target = os.readlink(full)
            except OSError:
                return pairs, None
            if target.startswith("/"):
                current = "/"
            pending.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
        else:
            current = full
    return pairs, current


def _dev_ino(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class InotifyWatch:
    """Tells whether anything a loaded policy depends on changed, from queued inotify events.

    Raises `InotifyUnavailable` when inotify cannot be used (the caller falls back to the
    stat walk). The top directories' device and inode are also compared on every check, a
    cheap final check that notices a file system mounted over one of them.
    """

    def __init__(self, dirs: Sequence[str]) -> None:
        self._inotify = Inotify()
        self._names: dict[int, set[str] | None] = {}  # watch → names of interest (None: all)
        self._pending = False
        try:
            self.dirs = [os.path.abspath(d) for d in dirs]
            self._tops = [(d, _dev_ino(d)) for d in self.dirs]
            for directory in self.dirs:
                self._watch_tree(directory)
        except BaseException:
            self.close()
            raise

    # -- placing watches -------------------------------------------------------------------

    def _cover(self, path: str, names: set[str] | None) -> bool:
        """Watch `path` for `names` of its entries (None: everything); True if that is more
        than was watched before."""
        try:
            wd = self._inotify.add_watch(path, CHANGES)
        except InotifyUnavailable:
            raise
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                self._pending = True  # changed since it was looked up: reload next time
                return False
            raise InotifyUnavailable(err.errno, f"cannot watch {path}: {err.strerror}") from err
        if wd not in self._names:
            self._names[wd] = names if names is None else set(names)
            return True
        known = self._names[wd]
        if known is None:
            return False
        if names is None:
            self._names[wd] = None
            return True
        if names <= known:
            return False
        known |= names
        return True

    def _watch_path(self, path: str) -> bool:
        pairs, target = lookups(os.path.abspath(path))
        grew = False
        for directory, name in pairs:
            grew |= self._cover(directory, {name})
        if target is not None:
            grew |= self._cover(target, None)
        return grew

    def _watch_tree(self, directory: str) -> bool:
        """`directory` and everything under it (symlinks resolved, not recursed into)."""
        grew = self._watch_path(directory)
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return grew
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                grew |= self._watch_tree(entry.path)
            elif entry.is_symlink():
                grew |= self._watch_path(entry.path)
            else:
                grew |= self._cover(entry.path, None)
        return grew

    def add(self, files: DiskFiles) -> bool:
        """Also watch what a load through `files` depended on. True if a dependency was not
        watched yet: it was read before being watched, so the load must be done again."""
        grew = False
        for path in sorted(files.listed):
            grew |= self._watch_tree(path)
        for path in sorted(files.read):
            grew |= self._watch_path(path)
        return grew

    # -- checking ----------------------------------------------------------------------------

    def _relevant(self, wd: int, name: str) -> bool:
        if wd not in self._names:
            return True  # IN_Q_OVERFLOW (wd -1) or a watch we do not know
        names = self._names[wd]
        return names is None or not name or name in names

    def drain(self) -> None:
        """Forget the events queued so far (about to load everything again)."""
        self._inotify.read_events()

    def mark_changed(self) -> None:
        self._pending = True

    def changed(self) -> bool:
        if not self._pending:
            for event in self._inotify.read_events():
                if self._relevant(event.wd, event.name):
                    self._pending = True
        if not self._pending:
            self._pending = any(_dev_ino(d) != sig for d, sig in self._tops)
        return self._pending

    def close(self) -> None:
        self._inotify.close()
