"""The per-call handler: a forked child of the agent (or fork server) that connects the
data channel, starts what the command asks for and relays it (docs/reference/protocol.md#dom0-to-vm,
docs/reference/protocol.md#data-channel)."""

from __future__ import annotations

import marshal
import os
import pwd
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol.cmdline import Command, parse_command, split_user, strip_nul
from ..protocol.constants import EXIT_PROBLEM, MsgType
from ..protocol.errors import RemoteProtocolError
from ..protocol.records import astuple, record
from ..services.rpcconfig import ServiceConfig
from ..services.spawn import Detached, Executor, Failed, Prepared, SpawnContext, prepare_command
from ..system.environment import Environment
from ..transport import vchan

# The relay and the service side are not imported here: only call processes run them, and the
# agent, which imports this module for its context and packing, would hold them idle (~0.3
# MiB). The call spawner loads them before it forks its workers (`load_call_modules`).
if TYPE_CHECKING:
    from .relay import SingleSocket

__all__ = ["HandlerContext", "run_handler", "own_user_name", "pack_call", "run_packed_call",
           "load_call_modules"]

#: agent handler / client-vm data connect timeout (docs/reference/protocol.md#timeouts)
DATA_CONNECT_TIMEOUT = 120.0


@record
class HandlerContext:
    #: the program's environment: vchans, service directories, what services inherit
    env: Environment
    own_version: int
    #: None when the agent runs as root (switches users per call)
    own_user: str | None
    log: Callable[[str], None]
    rpc_config_path: tuple[str, ...]
    #: a fork-server handler (docs/reference/protocol.md#fork-server-socket): the command comes
    #: without `USER:`, runs as
    #: this process's user (no switch, `$SHELL -c` for shell commands); give it an empty
    #: `rpc_config_path`, as the fork server reads no rpc-config
    fork_server: bool = False

    @classmethod
    def for_agent(cls, env: Environment, own_version: int, own_user: str | None,
                  log: Callable[[str], None]) -> HandlerContext:
        """The context of the agent's handlers (not a fork server's)."""
        return cls(env, own_version, own_user, log, env.rpc_config_path)

    @property
    def service_path(self) -> tuple[str, ...]:
        return self.env.service_path

    @property
    def executor(self) -> Executor:
        if self.fork_server:
            return Executor.FORK_SERVER
        return Executor.ROOT_AGENT if self.own_user is None else Executor.USER_AGENT


def own_user_name() -> str | None:
    """The agent's own user in non-root mode, None when it runs as root."""
    uid = os.geteuid()
    if uid == 0:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def run_handler(
    msgtype: int, domain: int, port: int, cmdline: bytes, ctx: HandlerContext,
    config: ServiceConfig | None = None,
) -> int:
    """Serve one call; returns the handler's exit status. `config`: the rpc-config the agent
    already read for it (None: read here).

    `cmdline` is `USER:COMMAND` for an agent handler, `COMMAND` alone when `ctx.fork_server`.
    """
    log = ctx.log
    # Everything short of starting is done before connecting: the caller is still loading
    # its relay when it starts listening, and this work would otherwise follow the connect
    # on the call's path (docs/architecture.md#a-calls-start).
    call = _prepare(msgtype, cmdline, ctx, config)
    try:
        try:
            env = ctx.env
            channel = vchan.connect(env.vchan_socket_dir, domain, env.vchan_domain, port,
                                    DATA_CONNECT_TIMEOUT, pair_dirs=env.vchan_pair_dirs)
        except OSError as err:
            log(f"Data vchan connection failed: {err}")
            return 1
        # the channel is closed on every way out: a call process may serve another call
        # (docs/architecture.md#the-call-spawner)
        try:
            return _serve(call, ctx, channel)
        finally:
            channel.close()
    finally:
        call.discard()


class _Call:
    """One call made ready to start: its parsed command, or why it cannot run."""

    __slots__ = ("text", "just_exec", "command", "prepared", "single", "problem")

    def __init__(self, text: bytes, just_exec: bool) -> None:
        self.text = text
        self.just_exec = just_exec
        self.command: Command | None = None
        self.prepared: Prepared | None = None
        self.single: SingleSocket | None = None
        #: (status, log line) reported instead of starting anything
        self.problem: tuple[int, str] | None = None

    def discard(self) -> None:
        if self.prepared is not None:
            self.prepared.discard()
        if self.single is not None:
            self.single.close()


def _prepare(msgtype: int, cmdline: bytes, ctx: HandlerContext,
             config: ServiceConfig | None) -> _Call:
    """The call's command parsed and its start prepared (`spawn.prepare_command`); nothing is
    started or connected."""
    from .relay import SingleSocket  # lazy: call processes only, not the idle agent

    text = strip_nul(cmdline)
    call = _Call(text, msgtype == MsgType.JUST_EXEC)
    try:
        if ctx.fork_server:
            user_b, command_b = os.fsencode(ctx.own_user or ""), text
        else:
            user_b, command_b = split_user(text)
        command: Command = parse_command(command_b)
    except RemoteProtocolError as err:
        call.problem = (EXIT_PROBLEM, f"cannot parse command {text!r}: {err}")
        return call
    spawn_ctx = SpawnContext(
        executor=ctx.executor,
        service_path=ctx.service_path,
        env=ctx.env,
        rpc_config_path=ctx.rpc_config_path,
        handler_pid=os.getpid(),
        just_exec=call.just_exec,
        own_user=ctx.own_user,
        log=ctx.log,
    )
    try:
        call.prepared = prepare_command(command, os.fsdecode(user_b), spawn_ctx, config)
        # before the service exists: it may ask for single-socket mode at once
        call.single = SingleSocket()
    except OSError as err:
        # reported after the HELLO: the caller sees a failed call, not a connect timeout
        call.problem = (EXIT_PROBLEM, f"cannot set up the service's streams: {err.strerror}")
        return call
    call.command = command
    return call


def _serve(call: _Call, ctx: HandlerContext, channel: socket.socket) -> int:
    from .service_side import relay_started, send_hello  # lazy: call processes only

    log = ctx.log
    # HELLO before anything is started (docs/reference/protocol.md#dom0-to-vm step 6): a handler
    # that dies later leaves its caller a channel closed early, whatever the service got to do
    try:
        send_hello(channel, ctx.own_version)
    except OSError as err:
        log(f"data channel: {err}")
        return 1
    if call.problem is not None:
        status, message = call.problem
        log(message)
        _send_status_only(channel, ctx, status, call.just_exec)
        return status
    assert call.prepared is not None and call.single is not None and call.command is not None
    result = call.prepared.start()
    if isinstance(result, Failed):
        log(result.message)
        log(f"failed to spawn process (exited {result.status}): {os.fsdecode(call.text)}")
        _send_status_only(channel, ctx, result.status, call.just_exec)
        return result.status
    if isinstance(result, Detached):
        if result.pid is not None:
            log(f"executed (nowait): {os.fsdecode(call.text)} (pid {result.pid})")
        _send_status_only(channel, ctx, 0, True)
        channel.close()
        return 0
    status = relay_started(channel, result, call.command, call.text, ctx.own_version, log,
                           call.single)
    return 1 if status < 0 else status


def pack_call(msgtype: int, domain: int, port: int, cmdline: bytes,
              config: ServiceConfig | None) -> bytes:
    """`run_handler`'s arguments as one message, for a call process the agent did not fork
    itself (docs/architecture.md#the-call-spawner). Our own processes exchange it; marshal
    is enough and costs nothing to load."""
    return marshal.dumps((msgtype, domain, port, cmdline,
                          None if config is None else astuple(config)))


def run_packed_call(params: bytes, ctx: HandlerContext) -> int:
    """`run_handler` on the arguments `pack_call` packed."""
    msgtype, domain, port, cmdline, config = marshal.loads(params)
    return run_handler(msgtype, domain, port, cmdline, ctx,
                       None if config is None else ServiceConfig(*config))


def _send_status_only(
    channel: socket.socket, ctx: HandlerContext, status: int, just_exec: bool
) -> None:
    from .service_side import (  # lazy: call processes only, not the idle agent
        VM_FAILURE_EOFS,
        send_status_only,
    )

    send_status_only(channel, ctx.own_version, status, ctx.log,
                     () if just_exec else VM_FAILURE_EOFS)


def load_call_modules() -> None:
    """Import what serving a call takes beyond this module: the call spawner does it once,
    before it forks workers, which then start each call with it loaded."""
    import mmap  # noqa: F401  # lazy: the relay's buffers (`relay._unbacked`), loaded once

    from . import relay, service_side  # noqa: F401  # lazy: the spawner's, not the agent's
