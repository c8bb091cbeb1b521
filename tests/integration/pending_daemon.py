"""qrexec-daemon whose policy worker never decides: every valid trigger stays pending.

Run by path with the qrexec-daemon arguments. It stands in for the policy side of a source
domain's daemon so that legacy `qrexec-client -c` can answer a pending request: the worker
ends with status 0 once the request was answered by a SERVICE_CONNECT, or with 1 (refusal)
after `PENDING_TIMEOUT` seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

from pyqrexec.cli import qrexec_daemon
from pyqrexec.daemon import daemon as daemon_module

PENDING_TIMEOUT = 60.0


async def hold_until_answered(daemon: daemon_module.Daemon,
                              req: daemon_module.PendingRequest) -> int:
    ident = req.ident.rstrip(b"\0").decode()
    daemon.log(f"pending request {ident}")
    deadline = time.monotonic() + PENDING_TIMEOUT
    while not req.answered:
        if time.monotonic() > deadline:
            return 1
        await asyncio.sleep(0.01)
    return 0


class PendingDaemon(daemon_module.Daemon):
    def __init__(self, opts: daemon_module.DaemonOptions, log: Callable[[str], None],
                 *_args: Any, **_kw: Any) -> None:
        super().__init__(opts, log, hold_until_answered)


if __name__ == "__main__":
    # qrexec-daemon looks the class up at start, so replacing it here is enough
    daemon_module.Daemon = PendingDaemon  # type: ignore[misc]
    sys.exit(qrexec_daemon.main())
