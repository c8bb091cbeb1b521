"""What the resident programs (qrexec-daemon, qrexec-agent, qrexec-fork-server) leave out.

One of each runs per domain, so their memory counts fifty times on a host of fifty domains.
"""

from __future__ import annotations

import sys

__all__ = ["without_tls"]


def without_tls() -> None:
    """Keep asyncio from loading `ssl` (libssl and libcrypto: ~4 MiB resident per process).

    These programs speak over Unix sockets only. asyncio imports `ssl` where it can and
    runs without it where it cannot; a None entry in `sys.modules` makes the import fail.
    For a program's own process only (its `run()`), before anything imports asyncio."""
    if "asyncio" not in sys.modules:
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
