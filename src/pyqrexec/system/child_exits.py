"""Exits of child processes, seen from an asyncio loop (the daemons' per-call children).

Apart from `forking` so that a program can fork before it loads asyncio
(docs/architecture.md#the-call-spawner).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

__all__ = ["on_exit", "wait_exit"]


def on_exit(loop: asyncio.AbstractEventLoop, pid: int, callback: Callable[[int], None]) -> None:
    """Call `callback(exit code)` from the loop once child `pid` has exited (it is reaped)."""
    pidfd = os.pidfd_open(pid)

    def exited() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        try:
            _, wstatus = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(wstatus)
        except ChildProcessError:
            code = 0
        callback(code)

    loop.add_reader(pidfd, exited)


async def wait_exit(pid: int) -> int:
    """The exit code of child `pid` (negative: killed by that signal)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    on_exit(loop, pid, done.set_result)
    return await done
