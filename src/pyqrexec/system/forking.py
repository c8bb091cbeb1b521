"""Per-call child processes of the asyncio daemons (agent handlers, dom0 service sides).

Upstream forks a process per call; so do we (the agent through its call spawner, whose
workers serve call after call, docs/architecture.md#the-call-spawner): the child runs a plain
blocking relay, which is faster than multiplexing every call's bytes through the parent's
event loop, and a crash stays inside one call. No asyncio here: the agent forks its spawner
before it loads asyncio. The loop's side of a child's exit is `child_exits`.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable, Sequence

__all__ = ["fork_call"]


def fork_call(
    body: Callable[[], int], log: Callable[[str], None], keep: Sequence[int] = ()
) -> int:
    """Fork; the child runs `body` with default signals (SIGPIPE ignored) and no inherited
    fds >= 3 but those in `keep`, then exits with its status. Returns the child's pid."""
    # the parent's objects are frozen across the fork: a collection in the child would walk
    # them all and fault in a private copy of every page they sit on (milliseconds per call)
    gc.freeze()
    pid = os.fork()
    if pid:
        gc.unfreeze()
        return pid
    status = 1  # pragma: no cover - child from here on
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        # SIGPIPE stays ignored: the relay handles EPIPE (a service that exits without reading
        # its stdin must not kill the call's process); programs started from here get it back
        # at its default through posix_spawn (docs/reference/services.md#arguments-and-environment)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        low = 3
        for fd in sorted(set(keep)):
            os.closerange(low, fd)
            low = max(low, fd + 1)
        os.closerange(low, 1 << 16)
        status = body()
    except BaseException as err:  # noqa: BLE001 - last resort in a forked child
        try:
            log(f"call process failed: {err!r}")
        except BaseException:  # noqa: BLE001
            pass
    finally:
        sys.stderr.flush()
        os._exit(status & 0xFF)
