"""The agent's trigger socket: call requests from qrexec-client-vm
(docs/reference/protocol.md#vm-to-vm, docs/reference/protocol.md#trigger-socket).

Each accepted connection is one request. The agent rewrites its ident to `SOCKET<fd>`,
forwards it to the daemon in the form the negotiated control version allows, and keeps the
connection: the daemon's answer names it by that ident. After an allow the connection's EOF
means "call finished", which the agent reports as MSG_CONNECTION_TERMINATED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from ..protocol.channel import NEED_DATA, TriggerConnection
from ..protocol.errors import LocalProtocolError, RemoteProtocolError
from ..protocol.idents import agent_ident, parse_agent_ident
from ..protocol.messages import (
    Trigger4,
    field_str,
    pack_connection_terminated,
    pack_exec_params,
    pack_trigger2,
    pack_trigger3,
    pack_trigger4,
)
from ..transport.aio import BackgroundTasks, drain_until_eof
from ..transport.feed import read_message_async
from ..transport.unixsock import listen_unix

__all__ = ["TriggerSocket", "downgrade"]


def downgrade(trigger: Trigger4, ident: bytes, version: int) -> bytes | None:
    """The control message carrying `trigger` at `version`, or None if it cannot be sent.

    v3 has no source field; v2 also limits the service to 63 and the target to 31 bytes.
    Upstream's agent always sends TRIGGER_SERVICE4 (which an older daemon answers by exiting);
    the down-conversion is this system's.
    """
    source = field_str(trigger.source_domain)
    target = field_str(trigger.target_domain)
    service = trigger.service_name[:-1]
    try:
        if version >= 4:
            return pack_trigger4(service, target, ident, source)
        if source:
            return None
        if version == 3:
            return pack_trigger3(service, target, ident)
        return pack_trigger2(service, target, ident)
    except LocalProtocolError:
        return None


_LOG = logging.getLogger(__name__)


class _Request:
    __slots__ = ("sock", "connected")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        #: set once SERVICE_CONNECT arrived: the data channel to report when the socket closes
        self.connected: tuple[int, int] | None = None


class TriggerSocket:
    """Serves the trigger socket; `send` puts a message on the control channel."""

    def __init__(self, path: str, send: Callable[[bytes], None], version: Callable[[], int],
                 ready: Callable[[], Awaitable[None]]) -> None:
        self.path = path
        self.send = send
        #: waits while the control channel is full (docs/reference/protocol.md#flow-control)
        self.ready = ready
        self.version = version
        #: a `log(message)` callable
        self.log: Callable[[str], None] = _LOG.info
        self.loop = asyncio.get_running_loop()
        #: one task per caller: reading its request, then waiting for its call's end
        self.connections = BackgroundTasks()
        #: fd -> request waiting for the daemon's answer
        self.pending: dict[int, _Request] = {}
        self.listener: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # every program of the domain may call; the socket appears only once it listens, so a
        # qrexec-client-vm started with the agent finds it missing or working, never refusing
        sock = listen_unix(self.path, mode=0o777, backlog=5)
        sock.setblocking(False)
        self.listener = sock
        self._task = self.loop.create_task(self._accept_loop())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.listener is not None:
            self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _accept_loop(self) -> None:
        assert self.listener is not None
        while True:
            await self.ready()
            conn, _ = await self.loop.sock_accept(self.listener)
            conn.setblocking(False)
            self.connections.start(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.ready()
            trigger = await read_message_async(self.loop, conn, TriggerConnection(), NEED_DATA)
            if not isinstance(trigger, Trigger4):
                raise EOFError("no request")
        except (EOFError, OSError, RemoteProtocolError):
            self.log("Invalid request received from qrexec-client-vm, is it outdated?")
            conn.close()
            return
        fd = conn.fileno()
        message = downgrade(trigger, field_str(agent_ident(fd)), self.version())
        if message is None:
            self.log("request cannot be expressed at the daemon's protocol version, refusing")
            conn.close()
            return
        self.pending[fd] = _Request(conn)
        self.send(message)

    def daemon_gone(self) -> None:
        """A new daemon knows nothing of our idents: refuse what still waits for an answer."""
        for req in self.pending.values():
            req.sock.close()
        self.pending.clear()

    def _take(self, ident: bytes, what: str) -> _Request | None:
        fd = parse_agent_ident(ident)
        req = self.pending.pop(fd, None) if fd is not None else None
        if req is None:
            self.log(f"Received {what} for unknown service request"
                     if what == "REFUSED" else "invalid ident")
        return req

    def refused(self, ident: bytes) -> None:
        req = self._take(ident, "REFUSED")
        if req is not None:
            req.sock.close()

    def connect(self, ident: bytes, domain: int, port: int) -> None:
        req = self._take(ident, "SERVICE_CONNECT")
        if req is None:
            return
        req.connected = (domain, port)
        try:
            req.sock.send(pack_exec_params(domain, port))
        except OSError:
            # the caller is gone: the port (for VM -> dom0, allocated by our own daemon) is
            # freed only by this report
            req.sock.close()
            self.send(pack_connection_terminated(domain, port))
            return
        self.connections.start(self._wait_end(req))

    async def _wait_end(self, req: _Request) -> None:
        assert req.connected is not None
        await drain_until_eof(self.loop, req.sock, self.ready)
        req.sock.close()
        self.send(pack_connection_terminated(*req.connected))
