"""One module per program; `entry` is how each one's console script runs it."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["entry", "INTERRUPTED"]

#: exit status after Ctrl-C, as a shell reports a command ended by SIGINT
INTERRUPTED = 130


def entry(main: Callable[[], int]) -> None:
    """Run `main` and exit with its status; Ctrl-C ends the program with 130 and no
    traceback (the person pressing it asked for exactly that), a closed output pipe quietly."""
    try:
        status = main()
    except KeyboardInterrupt:
        status = INTERRUPTED
    except BrokenPipeError:
        status = 1
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass
    sys.exit(status)
