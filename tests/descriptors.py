"""This process's open descriptors, for tests that check a call leaves none behind."""

from __future__ import annotations

import gc
import os


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def open_fds_settled() -> set[int]:
    """`open_fds()` once earlier tests' garbage is gone. The suite runs many tests in one
    process: a socket of theirs that the collector closes while the code under test runs is
    not that code's doing. Use it only for the "before" set: a descriptor the code under test
    leaves to the collector is still its leak."""
    gc.collect()
    return open_fds()
