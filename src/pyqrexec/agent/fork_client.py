"""The agent's side of the fork server (docs/reference/protocol.md#fork-server-socket;
docs/reference/cli.md#qrexec-agent `-s`/`-S`).

A request may be handed to the fork server of the user it runs as when it is not `nogui`
and its rpc-config keeps the service descriptor and sets neither `exit-on-client-eof` nor
`exit-on-service-eof`. The agent then sends `qrexec_cmd_info` + the cmdline without `USER:`
and keeps the socket: its EOF means the call is over. When no fork server listens (`ENOENT`,
`ECONNREFUSED`) the agent runs the call in a handler of its own, as if there were none.

How the agent wires it in (agent.py as of the wait-for-session parking): in `_launch`, i.e.
after `_plan` read the rpc-config and any parking for wait-for-session is over::

    handover = prepare_handover(self.opts.fork_server_socket, call.msgtype, call.domain,
                                call.port, call.cmdline, call.config, self.opts.own_user)
    if handover is not None:
        self.background.start(self._hand_over(call, handover))
        return
    ...                                    # fork_call(run_handler ...), as today

    async def _hand_over(self, call, handover):
        sock = await hand_over(self.loop, handover, self.log)
        if sock is None:                   # no fork server for that user
            ...                            # the fork_call path above
            return
        watch_until_eof(self.loop, sock, lambda: self._send_soon(
            pack_connection_terminated(call.domain, call.port)), self._control_ready,
            tasks=self.background)

`prepare_handover` takes `ExecParams.cmdline` as it is (`USER:COMMAND`, no NUL) and the
config `_plan` left in `call.config`: `None` there means defaults for a shell command, but
"not loaded" (a rpc-config error the handler must report, or nogui) for a `QUBESRPC` one,
which therefore stays in the agent. A template of `None` (`-S`, `-s ''`) disables the fork
server. `hand_over` never raises and returns `None` for "run it in the agent". The agent
sends nothing else on the socket.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from ..protocol.cmdline import Command, parse_command, split_user
from ..protocol.errors import RemoteProtocolError
from ..protocol.messages import CmdInfo, pack_cmd_info
from ..protocol.records import record
from ..services.rpcconfig import DEFAULT_CONFIG, ServiceConfig
from ..transport.aio import BackgroundTasks, connect_unix, drain_until_eof

__all__ = [
    "Handover",
    "fork_server_allowed",
    "fork_server_path",
    "prepare_handover",
    "connect_handover",
    "hand_over",
    "watch_until_eof",
]

_LOG = logging.getLogger(__name__)

#: connect errors that mean "no fork server for this user": fall back silently
_NO_SERVER = (errno.ENOENT, errno.ECONNREFUSED)


@record
class Handover:
    """Where to send a request and the bytes to send."""

    path: str
    #: `qrexec_cmd_info` + cmdline without `USER:`, NUL-terminated
    request: bytes


def fork_server_allowed(command: Command, config: ServiceConfig) -> bool:
    """docs/reference/protocol.md#fork-server-socket: not `nogui`, and the rpc-config keeps the
    descriptor and sets neither
    `exit-on-client-eof` nor `exit-on-service-eof` (shell commands have the defaults)."""
    return not command.nogui and config.fork_server_allowed


def fork_server_path(template: str, user: str) -> str:
    """The template with its (first) `%s` replaced by `user`."""
    return template.replace("%s", user, 1)


def prepare_handover(
    template: str | None,
    msgtype: int,
    domain: int,
    port: int,
    cmdline: bytes,
    config: ServiceConfig | None,
    own_user: str | None = None,
) -> Handover | None:
    """What to send to which fork server, or None when the agent must handle the call.

    `cmdline` is `USER:COMMAND` without its NUL; `config` the rpc-config the agent applied
    (None: the defaults for a shell command; for a `QUBESRPC` command, none could be read).
    The user is the one after `force-user`. `own_user` is the agent's user in non-root mode:
    then only that user's fork server is used, so that a call for another user still meets
    the agent's user check (docs/reference/services.md#starting-the-program) instead of running in
    someone's session.
    A cmdline that does not parse is left to the agent's handler, which reports 125.
    """
    if not template:
        return None
    try:
        user_b, command_b = split_user(cmdline)
        command = parse_command(command_b)
    except RemoteProtocolError:
        return None
    if config is None:
        if command.service is not None:
            return None
        config = DEFAULT_CONFIG
    if not fork_server_allowed(command, config):
        return None
    user = config.force_user if config.force_user is not None else os.fsdecode(user_b)
    if own_user is not None and user != own_user:
        return None
    request = pack_cmd_info(CmdInfo(msgtype, domain, port, command_b + b"\0"))
    return Handover(fork_server_path(template, user), request)


def _fallback(err: OSError, handover: Handover) -> None:
    if err.errno not in _NO_SERVER:
        _LOG.info("cannot use the fork server %s: %s", handover.path, err)


def connect_handover(handover: Handover, timeout: float = 5.0) -> socket.socket | None:
    """Blocking form: connect and send; the connected socket, or None to fall back."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(handover.path)
        sock.sendall(handover.request)
    except OSError as err:
        sock.close()
        _fallback(err, handover)
        return None
    sock.settimeout(None)
    return sock


async def hand_over(loop: asyncio.AbstractEventLoop, handover: Handover) -> socket.socket | None:
    """Asyncio form of `connect_handover`; the socket it returns is non-blocking.

    A Unix-socket connect completes at once or fails (a full listen queue is waited out by
    `aio.connect_unix`), and the request (at most 64 KiB and a bit) fits the socket buffer
    of a fresh connection, so this hardly ever waits.
    """
    try:
        sock = await connect_unix(handover.path)
    except OSError as err:
        _fallback(err, handover)
        return None
    try:
        await loop.sock_sendall(sock, handover.request)
    except OSError as err:
        sock.close()
        _fallback(err, handover)
        return None
    return sock


def watch_until_eof(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, finished: Callable[[], None],
    ready: Callable[[], Awaitable[None]] | None = None, *, tasks: BackgroundTasks,
) -> None:
    """Close `sock` and call `finished` once it reaches EOF (or fails). Bytes the fork
    server should not send are read and dropped; `ready` pauses reading (see
    `drain_until_eof`). The watch is one of `tasks`."""
    sock.setblocking(False)

    async def watch() -> None:
        await drain_until_eof(loop, sock, ready)
        sock.close()
        finished()

    tasks.start(watch())
