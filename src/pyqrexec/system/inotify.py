"""A minimal Linux inotify binding (ctypes on libc, stdlib only; see inotify(7)).

`Inotify` owns one non-blocking inotify descriptor; `read_events()` returns what is queued
without waiting. Anything that keeps inotify from working raises `InotifyUnavailable`, so that
callers can fall back to polling.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

__all__ = [
    "IN_MODIFY",
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_MOVE_SELF",
    "IN_UNMOUNT",
    "IN_Q_OVERFLOW",
    "IN_IGNORED",
    "IN_ONLYDIR",
    "IN_DONT_FOLLOW",
    "CHANGES",
    "Event",
    "Inotify",
    "InotifyUnavailable",
]

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_DONT_FOLLOW = 0x2000000
# Every event that means "content, metadata or names changed" (not open/read/close-nowrite).
CHANGES = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_READ_SIZE = 65536


class InotifyUnavailable(OSError):
    """inotify cannot be used here (no libc symbol, no kernel support, limits reached)."""


@dataclass(frozen=True, slots=True)
class Event:
    wd: int  # -1 for IN_Q_OVERFLOW
    mask: int
    name: str  # the entry's name for events on a watched directory's children, else ""


_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        except (OSError, AttributeError) as err:
            raise InotifyUnavailable(f"inotify is not available: {err}") from err
        _libc = libc
    return _libc


class Inotify:
    """One inotify instance; `close()` (or `with`) releases its descriptor and watches."""

    def __init__(self) -> None:
        libc = _load_libc()
        fd: int = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise InotifyUnavailable(code, f"inotify_init1: {os.strerror(code)}")
        self.fd = fd
        self._add = libc.inotify_add_watch

    def add_watch(self, path: str, mask: int) -> int:
        """Watch descriptor of `path` (the same one again for an inode already watched; the
        mask then replaces the old one). `FileNotFoundError` and the like for a bad path,
        `InotifyUnavailable` when the watch limit is reached."""
        wd: int = self._add(self.fd, os.fsencode(path), mask)
        if wd < 0:
            code = ctypes.get_errno()
            if code == errno.ENOSPC:  # fs.inotify.max_user_watches reached
                raise InotifyUnavailable(code, "inotify watch limit reached", path)
            raise OSError(code, os.strerror(code), path)
        return wd

    def read_events(self) -> list[Event]:
        """Everything queued now (an empty list when nothing is), never blocks."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return events
            events.extend(parse_events(data))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_events(data: bytes) -> list[Event]:
    """The `struct inotify_event` records of one read()."""
    events = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        raw = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        events.append(Event(wd, mask, os.fsdecode(raw)))
    return events
