"""qrexec-daemon's client socket (docs/reference/protocol.md#client-socket): where dom0's
`qrexec-client` and the policy side's request workers hand the daemon their requests.

Served from the event loop's reader callbacks on plain non-blocking sockets, with no asyncio
transport, stream or task per connection: those cost about 0.1 ms of the daemon's CPU on
every call's start, time that on a small machine the caller spends waiting for it
(docs/architecture.md#a-calls-start). The rules of what a client may send are
`protocol.channel.ClientSession`'s; what a request does is `Daemon.client_request`'s.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING

from ..protocol.channel import (
    END_OF_STREAM,
    NEED_DATA,
    ClientRequest,
    ClientSession,
    UnexpectedData,
)
from ..protocol.constants import CLIENT_PROTOCOL_VERSION, MAX_CLIENTS
from ..protocol.errors import RemoteProtocolError
from ..protocol.messages import hello
from ..protocol.session import Step
from ..transport.feed import read_message_nowait
from ..transport.unixsock import listen_unix

if TYPE_CHECKING:
    from .daemon import Daemon

__all__ = ["Client", "ClientSocket"]

#: how long accepting pauses after an error other than "none waiting" (EMFILE, say)
_ACCEPT_PAUSE = 0.1
#: connections the kernel queues before the daemon accepts them (upstream's backlog)
_BACKLOG = 5


class ClientSocket:
    """The listening socket and its connections."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.loop = daemon.loop
        self.listener: socket.socket | None = None
        self.clients: set[Client] = set()
        self._paths: list[str] = []

    def open(self, path: str, links: list[str]) -> None:
        """Listen at `path` (mode 0777, as upstream's) with symbolic links `links` to it;
        whatever stood at those paths is replaced. `path` appears only once it listens."""
        for p in links:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        sock = listen_unix(path, mode=0o777, backlog=_BACKLOG)
        sock.setblocking(False)
        self.listener = sock
        self.loop.add_reader(sock.fileno(), self._accept)
        for link in links:
            os.symlink(os.path.basename(path), link)
        self._paths = [path, *links]

    def close(self) -> None:
        """Stop listening and remove the paths; connections already accepted stay."""
        if self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
        for p in self._paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        self._paths = []

    def close_all(self) -> None:
        for client in list(self.clients):
            client.close()

    def _accept(self) -> None:
        listener = self.listener
        while listener is not None:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as err:
                # out of descriptors, say: stop accepting for a moment rather than spin
                self.daemon.log_repeated(f"cannot accept a client: {err}", cause="accept")
                self.loop.remove_reader(listener.fileno())
                self.loop.call_later(_ACCEPT_PAUSE, self._resume_accept, listener)
                return
            if len(self.clients) >= MAX_CLIENTS:
                self.daemon.log_repeated("too many clients, refusing a connection")
                sock.close()
                continue
            sock.setblocking(False)
            client = Client(self, sock)
            self.clients.add(client)
            client.start()

    def _resume_accept(self, listener: socket.socket) -> None:
        if listener is self.listener:
            self.loop.add_reader(listener.fileno(), self._accept)


class Client:
    """One connection: the daemon's HELLO, the client's HELLO and request, then nothing until
    EOF. The session is fed only what its next message still needs, so what follows stays
    in the socket; the request is not read while the control channel cannot take a header
    (docs/reference/protocol.md#flow-control)."""

    __slots__ = ("owner", "daemon", "sock", "fd", "session", "closed")

    def __init__(self, owner: ClientSocket, sock: socket.socket) -> None:
        self.owner = owner
        self.daemon = owner.daemon
        self.sock = sock
        self.fd = sock.fileno()
        self.session = ClientSession()
        self.closed = False

    def start(self) -> None:
        if self.send(hello(CLIENT_PROTOCOL_VERSION)):
            self.owner.loop.add_reader(self.fd, self._readable)

    def close(self, why: str = "") -> None:
        """End the connection (a client waiting for its port's release learns it so);
        `why` is logged."""
        if self.closed:
            return
        self.closed = True
        if why:
            self.daemon.log(f"client connection closed: {why}")
        self.owner.loop.remove_reader(self.fd)
        self.owner.clients.discard(self)
        self.daemon.ports.forget_waiter(self)
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send a short message whole (a new connection's buffer always takes what the
        daemon sends on it), or close the connection; whether it went."""
        try:
            sent = self.sock.send(data)
        except OSError as err:
            self.close(str(err))
            return False
        if sent != len(data):
            self.close("the client does not read its socket")
            return False
        return True

    def _readable(self) -> None:
        try:
            while not self.closed:
                if self.session.step is Step.REQUEST and not self._control_ready():
                    return
                event = read_message_nowait(self.sock, self.session, NEED_DATA)
                if event is NEED_DATA:
                    return
                self._event(event)
        except (RemoteProtocolError, OSError) as err:
            self.close(str(err))

    def _control_ready(self) -> bool:
        """Whether the request may be read now; if not, reading resumes once it may."""
        writer = self.daemon.writer
        if writer is None or writer.takes_header:
            return True
        self.owner.loop.remove_reader(self.fd)
        writer.when_ready(self._resume)
        return False

    def _resume(self) -> None:
        if not self.closed:
            self.owner.loop.add_reader(self.fd, self._readable)
            self._readable()

    def _event(self, event: object) -> None:
        step = self.session.step
        if event is END_OF_STREAM:
            self.close("" if step is Step.RUNNING
                       else "closed before its HELLO" if step is Step.HELLO
                       else "closed before its request")
        elif isinstance(event, UnexpectedData):
            self.daemon.log("Unexpected data received from client")
            self.close()
        elif isinstance(event, ClientRequest):
            self.daemon.client_request(self, event)
