"""The per-call handler: a forked child of the agent (or fork server) that connects the
data channel, starts what the command asks for and relays it (protocol.md §11.A, §12)."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol.cmdline import Command, parse_command, split_user, strip_nul
from ..protocol.constants import EXIT_PROBLEM, MsgType
from ..protocol.errors import RemoteProtocolError
from ..protocol.handshake import negotiate_data
from ..protocol.messages import HEADER, hello, pack_exit_code, parse_hello
from ..relay import ServiceEnd, run_service
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


def _user_env(user: pwd.struct_passwd) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HOME=user.pw_dir, SHELL=user.pw_shell or "/bin/sh", USER=user.pw_name,
               LOGNAME=user.pw_name)
    return env


def _start_shell(
    text: bytes, user: str, ctx: HandlerContext, just_exec: bool
) -> tuple[subprocess.Popen[bytes], socket.socket | None, socket.socket | None, int | None]:
    """Start a shell command (§4.3): /bin/sh -c in non-root mode, a login shell as root."""
    kwargs: dict[str, object] = {}
    env = dict(os.environ)
    env["QREXEC_AGENT_PID"] = str(os.getpid())
    if ctx.own_user is None:
        pw = pwd.getpwnam(user)
        shell = pw.pw_shell or "/bin/sh"
        argv = ["-" + os.path.basename(shell), "-c", os.fsdecode(text)]
        executable: str | None = shell
        env.update(_user_env(pw))
        kwargs.update(user=pw.pw_uid, group=pw.pw_gid,
                      extra_groups=os.getgrouplist(pw.pw_name, pw.pw_gid))
        if os.path.isdir(pw.pw_dir):
            kwargs["cwd"] = pw.pw_dir
    else:
        argv = ["/bin/sh", "-c", os.fsdecode(text)]
        executable = None
    if just_exec:
        proc = subprocess.Popen(
            argv, executable=executable, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True, **kwargs,  # type: ignore[call-overload]
        )
        return proc, None, None, None
    in_ours, in_theirs = socket.socketpair()
    out_ours, out_theirs = socket.socketpair()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(
            argv, executable=executable, stdin=in_theirs.fileno(), stdout=out_theirs.fileno(),
            stderr=err_w, env=env, start_new_session=True, **kwargs,  # type: ignore[call-overload]
        )
    finally:
        in_theirs.close()
        out_theirs.close()
        os.close(err_w)
    return proc, in_ours, out_ours, err_r


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run_handler(
    msgtype: int, domain: int, port: int, cmdline: bytes, ctx: HandlerContext
) -> int:
    """Serve one call; returns the handler's exit status."""
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
    user = os.fsdecode(user_b)
    if ctx.own_user is not None and user != ctx.own_user:
        log(f"requested user {user}, but qrexec-agent is running as user {ctx.own_user}")
        _send_status_only(channel, ctx, EXIT_PROBLEM, just_exec)
        return EXIT_PROBLEM
    if ctx.own_user is None:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            pw = None
        if pw is None or not user or not pw.pw_dir:
            log(f"user {user} does not exist")
            _send_status_only(channel, ctx, EXIT_PROBLEM, just_exec)
            return EXIT_PROBLEM
    try:
        proc, stdin, stdout, stderr = _start_shell(command.text, user, ctx, just_exec)
    except OSError as err:
        log(f"failed to start {text!r}: {err}")
        _send_status_only(channel, ctx, EXIT_PROBLEM, just_exec)
        return EXIT_PROBLEM
    log(f"executed: {os.fsdecode(text)} (pid {proc.pid})")
    if just_exec:
        _send_status_only(channel, ctx, 0, True)
        channel.close()
        return 0
    pidfd = os.pidfd_open(proc.pid)
    end = ServiceEnd(stdin=stdin, stdout=stdout, stderr=stderr, pidfd=pidfd,
                     reap=lambda: _exit_status(proc.wait()))
    status = run_service(channel, ctx.own_version, end, log)
    os.close(pidfd)
    channel.close()
    if status < 0:
        proc.poll()
        return 1
    log(f"pid {proc.pid} exited with {status}")
    return status & 0xFF
