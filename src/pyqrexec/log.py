"""Diagnostics in the C programs' format: `YYYY-MM-DD HH:MM:SS.mmm PROGRAM[PID]: MESSAGE`."""

from __future__ import annotations

import os
import sys
import time

__all__ = ["Logger"]


class Logger:
    def __init__(self, program: str) -> None:
        self.program = program

    def __call__(self, message: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        line = f"{stamp}.{int(now % 1 * 1000):03d} {self.program}[{os.getpid()}]: {message}\n"
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
