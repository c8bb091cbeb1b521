"""sd_notify(3) with the standard library: how `qrexec-host up` under a `Type=notify` unit
tells systemd it is ready (READY=1), reloading (RELOADING=1) or stopping (STOPPING=1).

The protocol: one datagram of `KEY=VALUE` lines to the AF_UNIX socket named by
$NOTIFY_SOCKET; a name starting with `@` is in the abstract namespace (a NUL byte first).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping

__all__ = ["notify", "notify_socket"]


def notify_socket(env: Mapping[str, str]) -> str | bytes | None:
    """The address to notify, or None when nobody asked for notifications."""
    name = env.get("NOTIFY_SOCKET", "")
    if not name:
        return None
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if not name.startswith("/"):  # vsock and other forms are not ours to speak
        return None
    return name


def notify(state: str, env: Mapping[str, str]) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=up") to systemd; False when there is nobody to
    tell or the send fails (a notification is never worth failing `up` for)."""
    address = notify_socket(env)
    if address is None:
        return False
    if state.startswith("RELOADING=1") and "MONOTONIC_USEC=" not in state:
        # systemd asks reload notifications to say when (Type=notify-reload)
        state += f"\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError:
        return False
    return True
