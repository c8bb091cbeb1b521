"""qrexec-agent's control loop (docs/reference/protocol.md#control-channel-lifecycle,
docs/reference/protocol.md#call-flows; docs/reference/cli.md#qrexec-agent).

One asyncio loop holds the control channel to the daemon. Each call gets a forked handler
process (as upstream does), watched through a pidfd; when it ends the agent reports
MSG_CONNECTION_TERMINATED so the daemon can free the port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable

from ..call.domain_handler import HandlerContext, load_call_modules, pack_call, run_handler
from ..protocol.channel import (
    END_OF_STREAM,
    NEED_DATA,
    AgentControl,
    Exec,
    Hello,
    ServiceConnect,
    ServiceRefused,
)
from ..protocol.cmdline import parse_command, split_user
from ..protocol.constants import VCHAN_BASE_PORT
from ..protocol.errors import RemoteProtocolError
from ..protocol.messages import ExecParams, hello, pack_connection_terminated
from ..protocol.records import record
from ..services.rpcconfig import ServiceConfig
from ..services.session import MAX_PARKED, start_session_waiter
from ..services.spawn import Failed, SpawnContext, service_config_for
from ..system.child_exits import on_exit
from ..system.environment import Environment
from ..system.forking import fork_call
from ..system.spawner import Spawner, call_ended
from ..transport import vchan
from ..transport.aio import BackgroundTasks, ChannelWriter
from ..transport.feed import read_message_async, read_message_nowait
from .fork_client import Handover, hand_over, prepare_handover, watch_until_eof
from .trigger import TriggerSocket

__all__ = ["AgentOptions", "Agent"]

_LOG = logging.getLogger(__name__)


@record
class AgentOptions:
    agent_socket: str
    fork_server_socket: str | None
    #: the program's environment: vchans, service directories, the service manager's socket
    env: Environment
    own_version: int
    own_user: str | None
    #: forks the call processes (docs/architecture.md#the-call-spawner); None: the agent does
    spawner: Spawner | None = None


class _Call:
    """An exec request from the daemon, possibly parked until the session is up."""

    __slots__ = ("msgtype", "domain", "port", "cmdline", "config", "wait_user", "source")

    def __init__(self, msgtype: int, domain: int, port: int, cmdline: bytes) -> None:
        self.msgtype = msgtype
        self.domain = domain
        self.port = port
        self.cmdline = cmdline
        self.config: ServiceConfig | None = None
        #: set when the call waits for the user's session: the user it will run as
        self.wait_user: str | None = None
        self.source = b""


class Agent:
    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        #: a `log(message)` callable, the form the call/ side takes
        self.log: Callable[[str], None] = _LOG.info
        self.loop = asyncio.get_running_loop()
        #: hand-overs to the fork server and the watches of their sockets
        self.background = BackgroundTasks()
        self.writer: ChannelWriter | None = None
        self.version = 0
        self.trigger: TriggerSocket | None = None
        self.parked: list[_Call] = []
        self.waiter: int | None = None
        self.ctx = HandlerContext.for_agent(opts.env, opts.own_version, opts.own_user,
                                            self.log)
        self.spawner = opts.spawner
        if self.spawner is not None:
            on_exit(self.loop, self.spawner.pid, self._spawner_gone)

    async def run(self) -> int:
        stop = asyncio.Event()
        self.loop.add_signal_handler(signal.SIGTERM, stop.set)
        self.loop.add_signal_handler(signal.SIGINT, stop.set)
        serve = asyncio.ensure_future(self._serve_forever())
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({serve, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if serve in done:
            stopper.cancel()
            return serve.result()
        serve.cancel()
        self._cleanup()
        return 0

    def _cleanup(self) -> None:
        if self.spawner is not None:
            self.spawner.close()
        if self.trigger is not None:
            self.trigger.close()

    async def _accept_daemon(self) -> socket.socket:
        env = self.opts.env
        listener, path = vchan.listen(env.vchan_socket_dir, env.vchan_domain, 0, VCHAN_BASE_PORT,
                                      pair_dirs=env.vchan_pair_dirs)
        listener.setblocking(False)
        try:
            conn, _ = await self.loop.sock_accept(listener)
        finally:
            listener.close()
            try:
                os.unlink(path)
            except OSError:
                pass
        conn.setblocking(False)
        return conn

    async def _serve_forever(self) -> int:
        first = True
        while True:
            conn = await self._accept_daemon()
            channel = AgentControl(self.opts.own_version)
            try:
                await self.loop.sock_sendall(conn, hello(self.opts.own_version))
                event = await read_message_async(self.loop, conn, channel, NEED_DATA)
                if not isinstance(event, Hello):
                    raise EOFError("the daemon closed the channel before its HELLO")
                self.version = event.version
            except (EOFError, OSError, RemoteProtocolError) as err:
                self.log(f"control channel handshake failed: {err}")
                return 1
            self.writer = ChannelWriter(self.loop, conn)
            if first:
                first = False
                self.trigger = TriggerSocket(self.opts.agent_socket, self._send_soon,
                                             lambda: self.version,
                                             self._control_ready)
                self.trigger.start()
                self._notify_ready()
            try:
                await self._serve_control(conn, channel)
            except RemoteProtocolError as err:
                self.log(f"fatal error from daemon: {err}")
                return 1
            self.log("control channel closed, waiting for a new daemon")
            self.writer.close()
            self.writer = None
            if self.trigger is not None:
                self.trigger.daemon_gone()
            conn.close()

    def _notify_ready(self) -> None:
        path = self.opts.env.notify_socket
        if not path:
            return
        if path.startswith("@"):
            path = "\0" + path[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(b"READY=1", path)
        except OSError as err:
            self.log(f"cannot notify the service manager: {err}")

    async def _serve_control(self, conn: socket.socket, channel: AgentControl) -> None:
        """Read the daemon's messages until the channel ends: EOF or an error, even inside a
        message, ends it (reference: Refusals); a protocol error other than an early EOF is
        raised. Read from a reader callback rather than a task awaiting each read, as the
        daemon serves its client socket (docs/architecture.md#a-calls-start): the start of
        every call passes here."""
        done: asyncio.Future[None] = self.loop.create_future()
        fd = conn.fileno()

        def finish(err: BaseException | None = None) -> None:
            self.loop.remove_reader(fd)
            if not done.done():
                if err is None:
                    done.set_result(None)
                else:
                    done.set_exception(err)

        def readable() -> None:
            try:
                while True:
                    event = read_message_nowait(conn, channel, NEED_DATA)
                    if event is NEED_DATA:
                        return
                    if event is END_OF_STREAM:
                        finish()
                        return
                    self._control_event(event)
            except OSError:
                finish()
            except RemoteProtocolError as err:
                finish(None if channel.reader.eof else err)
            except Exception as err:  # ends the agent, as an error in its read loop did
                finish(err)

        self.loop.add_reader(fd, readable)
        try:
            await done
        finally:
            self.loop.remove_reader(fd)

    def _control_event(self, event: object) -> None:
        if isinstance(event, Exec):
            self._start_handler(event.msgtype, event.params)
        elif isinstance(event, ServiceConnect) and self.trigger is not None:
            self.trigger.connect(event.ident, event.domain, event.port)
        elif isinstance(event, ServiceRefused) and self.trigger is not None:
            self.trigger.refused(event.ident)

    def _start_handler(self, msgtype: int, params: ExecParams) -> None:
        call = _Call(msgtype, params.connect_domain, params.connect_port, params.cmdline)
        self._plan(call)
        if call.wait_user is None:
            self._launch(call)
        else:
            self._park(call)

    def _plan(self, call: _Call) -> None:
        """Read the call's rpc-config (wait-for-session, force-user) before starting it."""
        try:
            user, command_text = split_user(call.cmdline)
            command = parse_command(command_text)
        except RemoteProtocolError:
            return  # the handler reports the parse failure to the caller
        if command.service is None or command.nogui:
            return
        ctx = SpawnContext(executor=self.ctx.executor, service_path=self.ctx.service_path,
                           env=self.opts.env, rpc_config_path=self.ctx.rpc_config_path,
                           own_user=self.ctx.own_user, log=self.log)
        config = service_config_for(command, ctx)
        if isinstance(config, Failed):
            return  # the handler reports it
        call.config = config
        if config.wait_for_session:
            call.wait_user = config.force_user or os.fsdecode(user)
            call.source = command.service.source

    def _park(self, call: _Call) -> None:
        """wait-for-session (docs/reference/services.md#waiting-for-the-session): hold the call
        until the waiter has exited."""
        if len(self.parked) >= MAX_PARKED:
            self.log("too many requests waiting for the session, not waiting")
            self._launch(call)
            return
        if self.waiter is None:
            assert call.wait_user is not None
            pid = start_session_waiter(self.ctx.service_path, call.wait_user, call.source,
                                       self.opts.env.environb)
            if pid is None:
                self._launch(call)
                return
            self.waiter = pid
            on_exit(self.loop, pid, self._session_ready)
        self.parked.append(call)

    def _session_ready(self, status: int) -> None:
        self.waiter = None
        parked, self.parked = self.parked, []
        for call in parked:
            self._launch(call)

    def _launch(self, call: _Call) -> None:
        handover = prepare_handover(self.opts.fork_server_socket, call.msgtype, call.domain,
                                    call.port, call.cmdline, call.config, self.opts.own_user)
        # no fork server for the user, the usual case: the call starts now, not after a task
        # whose connect would only fail (ENOENT) a turn of the loop later
        if handover is not None and os.path.exists(handover.path):
            self.background.start(self._hand_over(call, handover))
        else:
            self._fork_handler(call)

    async def _hand_over(self, call: _Call, handover: Handover) -> None:
        """Give the call to the user's fork server; its socket's EOF ends the call."""
        sock = await hand_over(self.loop, handover)
        if sock is None:
            self._fork_handler(call)
            return
        watch_until_eof(self.loop, sock, lambda: self._terminated(call), self._control_ready,
                        tasks=self.background)

    def _fork_handler(self, call: _Call) -> None:
        if self.spawner is not None:
            watch = self.spawner.launch(pack_call(call.msgtype, call.domain, call.port,
                                                  call.cmdline, call.config))
            if watch is not None:
                self._watch_call(call, watch)
                return

        def body() -> int:
            return run_handler(call.msgtype, call.domain, call.port, call.cmdline, self.ctx,
                               call.config)

        pid = fork_call(body, self.log)

        def ended(code: int) -> None:
            self.log(call_ended(pid, code))
            self._terminated(call)

        on_exit(self.loop, pid, ended)

    def _watch_call(self, call: _Call, watch: int) -> None:
        """The spawner's call process holds the other end of `watch` until it exits."""

        def ended() -> None:
            self.loop.remove_reader(watch)
            os.close(watch)
            self._terminated(call)

        self.loop.add_reader(watch, ended)

    def _spawner_gone(self, code: int) -> None:
        if self.spawner is not None:
            self.log(f"the call spawner exited with {code}; forking calls here")
            self.spawner.close()
            self.spawner = None
            # what the spawner held for its workers, the forks from here need
            load_call_modules()

    def _terminated(self, call: _Call) -> None:
        self._send_soon(pack_connection_terminated(call.domain, call.port))

    def _send_soon(self, data: bytes) -> None:
        if self.writer is not None:
            self.writer.post(data, lambda err: self.log(f"cannot write to the control "
                                                        f"channel: {err}"))

    async def _control_ready(self) -> None:
        """docs/reference/protocol.md#flow-control: the trigger socket and the sockets it tracks are
        not read while the control channel cannot take a header."""
        if self.writer is not None:
            await self.writer.ready()
