"""Copying a service's stderr to the system log (docs/reference/services.md#logging), best
effort."""

from __future__ import annotations

import os

from ..system.environment import Environment
from .launch import CLOSED, DEVNULL, find_program, launch

__all__ = ["open_syslog_writer"]

#: `logger` reads descriptor 3 in the background so that it outlives this shell, is reparented
#: to init and needs no reaping; the tag is a positional parameter, never parsed as shell text
_DETACH_LOGGER = b'"$0" -t "$1" <&3 3<&- >/dev/null &'


def open_syslog_writer(tag: str, env: Environment) -> int | None:
    """A pipe write end whose bytes go to `logger -t TAG`; None when that is not possible."""
    logger = find_program("logger", env.path)
    if logger is None:
        return None
    read_end, write_end = os.pipe()
    try:
        shell_pid = launch(
            b"/bin/sh",
            [b"sh", b"-c", _DETACH_LOGGER, os.fsencode(logger), os.fsencode(tag)],
            env.environb,
            (CLOSED, DEVNULL, 2, read_end),
        )
    except OSError:
        os.close(write_end)
        return None
    finally:
        os.close(read_end)
    os.waitpid(shell_pid, 0)
    return write_end
