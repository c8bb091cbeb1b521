"""A process's open descriptors, for tests that check a call leaves none behind.

The suite runs many tests in one process, and what earlier tests left (a thread that closes
its socket later, garbage the collector closes) may close descriptors while the code under
test runs. So a check looks only for descriptors that are there after and were not before:
a number that is new, or that now refers to something else."""

from __future__ import annotations

import os


def open_fds(pid: int | None = None) -> dict[int, str]:
    """Each open descriptor of process `pid` (this one by default) and what it refers to.
    One closed while the list is read is left out, and so is the descriptor that reads this
    process's list (it takes the lowest free number, which moves whenever another is closed)."""
    probe = os.open(f"/proc/{pid or 'self'}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        found = {}
        for name in os.listdir(probe):
            fd = int(name)
            if pid is None and fd == probe:
                continue
            try:
                found[fd] = os.readlink(name, dir_fd=probe)
            except FileNotFoundError:  # closed meanwhile
                pass
        return found
    finally:
        os.close(probe)


def opened_since(before: dict[int, str]) -> dict[int, str]:
    """The descriptors open now that were not open, as the same thing, in `before`."""
    return {fd: what for fd, what in open_fds().items() if before.get(fd) != what}
