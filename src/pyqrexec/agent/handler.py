"""The per-call handler: a forked child of the agent (or fork server) that connects the
data channel, starts what the command asks for and relays it (protocol.md §11.A, §12)."""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol.cmdline import Command, parse_command, split_user, strip_nul
from ..protocol.constants import EXIT_PROBLEM, MsgType
from ..protocol.errors import RemoteProtocolError
from ..protocol.handshake import negotiate_data
from ..protocol.messages import HEADER, hello, pack_exit_code, parse_hello
from ..relay import ServiceEnd, run_service
from ..services.environment import log_tag
from ..services.rpcconfig import ServiceConfig
from ..services.spawn import Detached, Executor, Failed, SpawnContext, Started, start_command
from ..transport import vchan

__all__ = ["HandlerContext", "run_handler", "own_user_name"]

#: agent handler / client-vm data connect timeout (protocol.md §18)
DATA_CONNECT_TIMEOUT = 120.0


@dataclass(frozen=True)
class HandlerContext:
    socket_dir: str
    own_domain: int
    own_version: int
    #: None when the agent runs as root (switches users per call)
    own_user: str | None
    log: Callable[[str], None]
    service_path: tuple[str, ...]
    rpc_config_path: tuple[str, ...]

    @property
    def executor(self) -> Executor:
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


def _send_status_only(
    channel: socket.socket, ctx: HandlerContext, status: int, just_exec: bool
) -> None:
    """HELLO, then (unless just-exec) STDOUT EOF, STDERR EOF, then EXIT_CODE (§13)."""
    msgs = hello(ctx.own_version)
    if not just_exec:
        msgs += HEADER.pack(MsgType.DATA_STDOUT, 0) + HEADER.pack(MsgType.DATA_STDERR, 0)
    msgs += pack_exit_code(status)
    channel.sendall(msgs)
    _read_peer_hello(channel, ctx)


def _read_peer_hello(channel: socket.socket, ctx: HandlerContext) -> None:
    """Best effort: consume the caller's HELLO so the caller sees an orderly close."""
    channel.settimeout(10)
    try:
        data = b""
        while len(data) < 12:
            chunk = channel.recv(12 - len(data))
            if not chunk:
                return
            data += chunk
        t, n = HEADER.unpack_from(data)
        negotiate_data(parse_hello(t, data[8:]), ctx.own_version)
    except (OSError, RemoteProtocolError) as err:
        ctx.log(f"data channel: {err}")


def run_handler(
    msgtype: int, domain: int, port: int, cmdline: bytes, ctx: HandlerContext,
    config: ServiceConfig | None = None,
) -> int:
    """Serve one call; returns the handler's exit status. `config`: the rpc-config the agent
    already read for it (None: read here)."""
    log = ctx.log
    just_exec = msgtype == MsgType.JUST_EXEC
    try:
        channel = vchan.connect(ctx.socket_dir, domain, ctx.own_domain, port,
                                DATA_CONNECT_TIMEOUT)
    except OSError as err:
        log(f"Data vchan connection failed: {err}")
        return 1
    text = strip_nul(cmdline)
    try:
        user_b, command_b = split_user(text)
        command: Command = parse_command(command_b)
    except RemoteProtocolError as err:
        log(f"cannot parse command {text!r}: {err}")
        _send_status_only(channel, ctx, EXIT_PROBLEM, just_exec)
        return EXIT_PROBLEM
    spawn_ctx = SpawnContext(
        executor=ctx.executor,
        service_path=ctx.service_path,
        rpc_config_path=ctx.rpc_config_path,
        handler_pid=os.getpid(),
        just_exec=just_exec,
        own_user=ctx.own_user,
        log=log,
    )
    result = start_command(command, os.fsdecode(user_b), spawn_ctx, config)
    if isinstance(result, Failed):
        log(result.message)
        log(f"failed to spawn process (exited {result.status}): {os.fsdecode(text)}")
        _send_status_only(channel, ctx, result.status, just_exec)
        return result.status
    if isinstance(result, Detached):
        if result.pid is not None:
            log(f"executed (nowait): {os.fsdecode(text)} (pid {result.pid})")
        _send_status_only(channel, ctx, 0, True)
        channel.close()
        return 0
    return _relay_started(channel, result, command, text, ctx)


def _relay_started(channel: socket.socket, started: Started, command: Command, text: bytes,
                   ctx: HandlerContext) -> int:
    log = ctx.log
    pid = started.pid
    pidfd = None
    reap = _no_process
    if pid is not None:
        log(f"executed: {os.fsdecode(text)} (pid {pid})")
        pidfd = os.pidfd_open(pid)

        def reap() -> int:
            _, wstatus = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(wstatus)
            return 128 - code if code < 0 else code

    stderr_log = None
    if command.service is not None and started.stderr is not None:
        tag = log_tag(command.service)

        def stderr_log(data: bytes) -> None:
            for line in data.decode(errors="replace").splitlines():
                log(f"{tag}: {line}")

    end = ServiceEnd(stdin=started.stdin, stdout=started.stdout, stderr=started.stderr,
                     pidfd=pidfd, reap=reap, stderr_log=stderr_log)
    status = run_service(channel, ctx.own_version, end, log)
    if pidfd is not None:
        os.close(pidfd)
    channel.close()
    if status < 0:
        return 1
    if pid is not None:
        log(f"pid {pid} exited with {status}")
    else:
        log("Socket service closed")
    return status & 0xFF


def _no_process() -> int:
    return 0
