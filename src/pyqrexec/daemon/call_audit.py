"""A request worker's part in the audit trail (docs/audit.md "Calls' ends").

The worker's policy connection is bound to an abstract address that carries a fresh call id:
the request's bytes stay upstream's, and the policy daemon reads the id from the address it
accepted. When a call the policy allowed is over (as far as the worker sees it), one end
report goes to the policy daemon's audit socket — only if that socket exists, which is how a
policy daemon announces that it takes them; an upstream one has none and hears nothing.
The report is sent after the call, in its own task: nothing waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

from ..call.traffic import Traffic
from ..policy.audit import (
    CALL_ADDRESS_PREFIX,
    EndReport,
    audit_socket_for,
    end_report_text,
)
from ..protocol.constants import DOM0_NAMES
from ..transport.aio import BackgroundTasks
from .policy_answer import PolicyAnswer

__all__ = ["CallAudit", "read_traffic", "write_traffic"]

_REPORTS = BackgroundTasks()


class CallAudit:
    def __init__(self) -> None:
        # policy.audit.new_call_id's id, from os.urandom as `secrets` takes it: `secrets`
        # would bring hashlib and libcrypto (~4 MiB) into every domain's daemon
        self.call = os.urandom(8).hex()
        self.started = time.monotonic()
        self.policy_socket: str | None = None  # set once the policy daemon answered
        self.scope: str | None = None  # set once the call was allowed
        #: (source -> service, service -> source) payload bytes, where dom0 relayed the call
        self.traffic: tuple[int, int] | None = None

    async def connect(self, path: str) -> socket.socket:
        """A connection to the policy socket `path` whose address names this call."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # a clash (never expected) only loses the join
            sock.bind(CALL_ADDRESS_PREFIX + self.call.encode())
        pause = 0.001
        while True:
            try:
                sock.connect(path)
                return sock
            except BlockingIOError:  # a full backlog: a Unix connect never completes later
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
            except OSError:
                sock.close()
                raise

    def allowed(self, answer: PolicyAnswer) -> None:
        """VM -> dom0 calls and disposables run to their end inside the worker; for other
        calls it only sees them connected."""
        target = answer.target or ""
        whole = target.startswith("@dispvm:") or (
            target in DOM0_NAMES and answer.target_uuid is None)
        self.scope = "call" if whole else "connect"

    def ended(self, status: int) -> None:
        if self.scope is None or self.policy_socket is None:
            return
        ms = int((time.monotonic() - self.started) * 1000)
        counts = self.traffic or (None, None)
        report = EndReport(self.call, self.scope, ms, status, *counts)
        _REPORTS.start(_send(audit_socket_for(self.policy_socket), end_report_text(report)))


async def _send(path: str, data: bytes) -> None:
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(data)
            await writer.drain()
        finally:
            writer.close()


# The counts come from the forked child that relayed a VM -> dom0 call (`call.traffic.Traffic`),
# through a pipe it writes once before it exits: what dom0 saw pass, never a domain's word.
_TRAFFIC_MAX = 64


def write_traffic(fd: int, traffic: Traffic | None) -> None:
    """In the child: one write, far below PIPE_BUF, so the parent reads it whole."""
    if traffic is not None:
        with contextlib.suppress(OSError):
            os.write(fd, f"{traffic.received} {traffic.sent}".encode())


def read_traffic(fd: int) -> tuple[int, int] | None:
    """In the parent, once the child has exited: its counts, or None if it wrote none."""
    try:
        words = os.read(fd, _TRAFFIC_MAX).split()
    except OSError:
        return None
    if len(words) != 2 or not all(w.isdigit() for w in words):
        return None
    return int(words[0]), int(words[1])
