"""Process-wide settings read from the environment (docs/reference/cli.md#common-environment)."""

from __future__ import annotations

import os

from ..protocol.handshake import own_max_version

#: on a client's start-up path: importing `typing` would cost ~3 ms (mypy takes it as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["max_protocol_version", "DEFAULT_SOCKET_DIR"]

#: qrexec-daemon's client socket directory
DEFAULT_SOCKET_DIR = "/var/run/qubes"


def max_protocol_version(log: Callable[[str], None] | None = None) -> int:
    version, warning = own_max_version(os.environ.get("QREXEC_MAX_PROTOCOL_VERSION"))
    if warning and log is not None:
        log(warning)
    return version
