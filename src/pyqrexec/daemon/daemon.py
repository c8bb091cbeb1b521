"""qrexec-daemon's event loop (docs/reference/protocol.md#control-channel-lifecycle,
docs/reference/protocol.md#trigger-validation).

One asyncio loop serves the control channel to the VM's agent and the dom0 client socket.
Everything the agent sends is policed by `protocol.control`; a violation ends the daemon
(status 1) as upstream does, because the agent is the only peer on that channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable

from ..protocol.channel import (
    END_OF_STREAM,
    NEED_DATA,
    ClientRequest,
    ConnectionTerminated,
    DaemonControl,
    Hello,
)
from ..protocol.constants import MAX_CLIENTS, VCHAN_BASE_PORT, MsgType
from ..protocol.control import Refusal, ServiceRequest
from ..protocol.errors import RemoteProtocolError
from ..protocol.handshake import IncompatibleVersion
from ..protocol.messages import (
    hello,
    pack_exec,
    pack_exec_params,
    pack_header,
    pack_service_refused,
)
from ..protocol.pending import Full, PendingTable
from ..protocol.pending import PendingRequest as _Pending
from ..protocol.ports import DEFAULT_SHARE, Busy, PortTable
from ..protocol.records import record
from ..system.environment import Environment
from ..system.log import RepeatLimited
from ..transport import vchan
from ..transport.aio import ChannelWriter
from ..transport.feed import read_message_async
from .client_socket import Client, ClientSocket

__all__ = ["DaemonOptions", "Daemon", "Fatal", "PendingRequest"]

#: stop reading the agent while this much of our own output to it waits beyond what the
#: kernel holds (our own limit: an agent that sends requests but never reads the answers would
#: otherwise grow our memory without bound; an agent that reads never gets near it)
_AGENT_BACKLOG_LIMIT = 64 << 10


class Fatal(Exception):
    """The daemon must exit with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@record
class DaemonOptions:
    domid: int
    name: str
    uuid: str
    default_user: str
    socket_dir: str
    vchan_dir: str
    policy_program: str
    own_version: int
    #: seconds for the first control connection; None = wait forever
    startup_timeout: float | None
    #: the program's environment: the policy and qubesd sockets, dom0 services' settings
    env: Environment
    #: most data ports one caller domain may hold in this daemon's table
    port_share: int = DEFAULT_SHARE


class PendingRequest(_Pending):
    """A trigger waiting for its policy answer (reference: Trigger validation, 8), and the
    task working on it."""

    __slots__ = ("task",)

    def __init__(self, ident: bytes, request: ServiceRequest) -> None:
        super().__init__(ident, request)
        self.task: asyncio.Task[int] | None = None


_LOG = logging.getLogger(__name__)

#: runs a call request; returns the worker status (0 = success)
Worker = Callable[["Daemon", PendingRequest], Awaitable[int]]


class Daemon:
    def __init__(self, opts: DaemonOptions, worker: Worker | None = None) -> None:
        self.opts = opts
        #: a `log(message)` callable, the form the call/ side takes
        self.log: Callable[[str], None] = _LOG.info
        self.worker = worker
        self.loop = asyncio.get_running_loop()
        self.ports: PortTable[Client] = PortTable(opts.domid, opts.port_share)
        #: when a request of ours last got a data port from each target daemon (worker.py:
        #: a request without one waits while others get theirs); one entry per target
        self.port_granted: dict[str, float] = {}
        #: for lines a hostile domain can make us repeat at will
        self.log_repeated = RepeatLimited(_LOG.info, self.loop.call_later)
        self.requests: PendingTable[PendingRequest] = PendingTable(MAX_CLIENTS)
        self.control: socket.socket | None = None
        #: the control channel's state (what the agent may send next), None between agents
        self.channel: DaemonControl | None = None
        self.writer: ChannelWriter | None = None
        self.client_socket = ClientSocket(self)

    # -- control channel ----------------------------------------------------------------
    async def connect_agent(self, timeout: float | None) -> None:
        try:
            sock = await vchan.connect_async(self.opts.vchan_dir, self.opts.domid, 0,
                                             VCHAN_BASE_PORT, timeout,
                                             pair_dirs=self.opts.env.vchan_pair_dirs)
        except vchan.VchanTimeout as err:
            raise Fatal(3, "qrexec connection timeout") from err
        except OSError as err:
            raise Fatal(3, f"cannot connect to the agent: {err}") from err
        sock.setblocking(False)
        channel = DaemonControl(self.opts.own_version)
        try:
            event = await read_message_async(self.loop, sock, channel, NEED_DATA)
            if not isinstance(event, Hello):
                raise EOFError("the agent closed the channel before its HELLO")
            await self.loop.sock_sendall(sock, hello(channel.version))
        except IncompatibleVersion as err:
            sock.close()
            raise Fatal(1, str(err)) from err
        except (EOFError, OSError, RemoteProtocolError) as err:
            sock.close()
            raise Fatal(1, f"control channel handshake failed: {err}") from err
        self.control = sock
        self.channel = channel
        self.writer = ChannelWriter(self.loop, sock)

    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until the agent breaks the protocol (Fatal) or the task is cancelled."""
        self.start_socket()
        if ready is not None:
            ready()
        while True:
            assert self.control is not None
            try:
                await self._serve_control(self.control)
            finally:
                self._agent_gone()
            try:
                await self.connect_agent(None)
            except Fatal as err:
                # status 3 is for the first connection only; a failed reconnect is 1
                # (docs/reference/protocol.md#control-channel-lifecycle)
                raise Fatal(1, f"cannot reconnect to the agent: {err}") from err
            self.start_socket()
            self.log("qrexec-agent has reconnected")

    def _agent_gone(self) -> None:
        self.stop_socket()
        self.client_socket.close_all()
        for req in self.requests.drop_pending():
            if req.task is not None:
                req.task.cancel()
        if self.writer is not None:
            self.writer.close()
        if self.control is not None:
            self.control.close()
        self.control = None
        self.channel = None
        self.writer = None

    async def _serve_control(self, sock: socket.socket) -> None:
        assert self.channel is not None
        channel = self.channel
        while True:
            if self.writer is not None:
                await self.writer.ready(_AGENT_BACKLOG_LIMIT)
            # EOF between two messages is a disconnect; inside one it is a short read
            # (docs/reference/protocol.md#refusals)
            try:
                event = await read_message_async(self.loop, sock, channel, NEED_DATA)
            except OSError as err:
                if not channel.buffered:
                    event = END_OF_STREAM
                else:
                    raise Fatal(1, f"short read from the agent: {err}") from err
            except RemoteProtocolError as err:
                raise Fatal(1, str(err)) from err
            if event is END_OF_STREAM:
                self.log("qrexec-agent has disconnected")
                return
            if isinstance(event, ConnectionTerminated):
                self._release(event.domain, event.port)
            elif isinstance(event, (ServiceRequest, Refusal)):
                self._handle_trigger(event)

    def _release(self, peer: int, port: int) -> None:
        released, client = self.ports.release(peer, port)
        if released and client is not None:
            client.close()

    async def send_to_agent(self, data: bytes) -> None:
        if self.writer is None:
            raise OSError("no agent connected")
        await self.writer.send(data)

    # -- call requests --------------------------------------------------------------------
    def _handle_trigger(self, result: ServiceRequest | Refusal) -> None:
        if isinstance(result, Refusal):
            self.log(f"refusing request: {result.reason}")
            self._refuse(result.ident)
            return
        full = self.requests.admit(result.ident)
        if full is Full.TOO_MANY:
            self.log_repeated("Service request denied, too many pending requests")
        elif self.worker is None:
            self.log(f"no policy worker: refusing {result.service}")
        elif full is Full.DUPLICATE:
            self.log("duplicate request ident, refusing")
        else:
            req = PendingRequest(result.ident, result)
            self.requests.add(req)
            req.task = self.loop.create_task(self._run_worker(req))
            return
        self._refuse(result.ident)

    async def _run_worker(self, req: PendingRequest) -> int:
        assert self.worker is not None
        try:
            status = await self.worker(self, req)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a worker failure refuses the call
            self.log(f"request worker failed: {err!r}")
            status = 1
        self.requests.done(req)
        if status != 0:
            if req.answered:
                self.log(f"request worker exited with code {status}, but the response "
                         "(allow) was already sent")
            else:
                self._refuse(req.ident)
        else:
            req.answered = True
        return status

    async def service_connect(self, req: PendingRequest, domain: int, port: int) -> int | None:
        """Answer `req` with an allow: SERVICE_CONNECT{domain, port} to the agent
        (docs/reference/protocol.md#vm-to-vm step 8). Port 0 allocates one with peer `domain`
        (VM -> dom0, docs/reference/protocol.md#vm-to-dom0 step 3); None when the table is full."""
        if port == 0:
            allocated = self.allocate(domain, None)
            if allocated is None:
                return None
            port = allocated
        req.answered = True
        await self.send_to_agent(pack_exec(MsgType.SERVICE_CONNECT, domain, port, req.ident))
        return port

    def allocate(self, peer: int, waiter: Client | None) -> int | None:
        """A data port for a channel with `peer`; None (logged) when it gets none."""
        port = self.ports.allocate(peer, waiter)
        if port is Busy.SHARE:
            self.log_repeated(f"Domain {peer} holds its share of {self.ports.share} data "
                              "ports, refusing it another", cause=f"share {peer}")
            return None
        if port is Busy.FULL:
            self.log_repeated("Failed to allocate new vchan port, too many clients?")
            return None
        return port

    def _refuse(self, ident: bytes) -> None:
        if self.writer is None:
            self.log("cannot send SERVICE_REFUSED: no agent connected")
            return
        self.writer.post(pack_service_refused(ident),
                         lambda err: self.log(f"cannot send SERVICE_REFUSED: {err}"))

    # -- client socket ------------------------------------------------------------------
    def start_socket(self) -> None:
        d = self.opts.socket_dir
        links = [os.path.join(d, f"qrexec.{self.opts.name}")]
        if self.opts.uuid:
            links.append(os.path.join(d, f"qrexec.uuid:{self.opts.uuid}"))
        self.client_socket.open(os.path.join(d, f"qrexec.{self.opts.domid}"), links)

    def stop_socket(self) -> None:
        self.client_socket.close()

    def client_request(self, client: Client, request: ClientRequest) -> None:
        """A client's request arrived (docs/reference/protocol.md#client-socket): answer a
        port-0 request with its port, hand the request to the agent."""
        params = request.params
        if request.msgtype == MsgType.SERVICE_CONNECT:
            req = self.requests.by_client_ident(request.ident)
            if req is None or req.answered:
                raise RemoteProtocolError("SERVICE_CONNECT for an unknown request")
            req.answered = True
        elif params.connect_port != 0:
            self.log(f"client requested port {params.connect_port} itself")
        port = params.connect_port
        if port == 0:
            allocated = self.allocate(params.connect_domain, client)
            if allocated is None:
                client.close()
                return
            port = allocated
            if not client.send(pack_header(request.msgtype, 8)
                                + pack_exec_params(self.opts.domid, port)):
                self.ports.release(params.connect_domain, port)
                return
        if self.writer is None:
            client.close("no agent connected")
            return
        payload = request.for_agent(self.opts.default_user.encode())
        self.writer.post(pack_exec(request.msgtype, params.connect_domain, port, payload),
                         lambda err: client.close(str(err)))
        # RUNNING: nothing more may come; EOF (or a release) ends the connection


async def run_daemon(daemon: Daemon, ready: Callable[[], None] | None) -> int:
    """Connect, serve, and turn SIGTERM into a clean exit 0."""
    loop = daemon.loop
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def body() -> int:
        await daemon.connect_agent(daemon.opts.startup_timeout)
        await daemon.serve(ready)
        return 0

    task = loop.create_task(body())
    stopper = loop.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if task.done():
        stopper.cancel()
        exc = task.exception()
        if isinstance(exc, Fatal):
            _LOG.info("%s", exc)
            status = exc.status
        elif exc is not None:
            raise exc
    else:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Fatal):
            await task
    daemon.stop_socket()
    if daemon.control is not None:
        daemon.control.close()
    return status
