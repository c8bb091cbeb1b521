"""The serving side of `qrexec-fork-server` (docs/reference/protocol.md#fork-server-socket,
docs/reference/cli.md#qrexec-fork-server).

The agent connects, sends one `qrexec_cmd_info` + cmdline (without `USER:`) and then only
waits for EOF. Every accepted connection gets its own child at once, so a slow or silent
peer never holds up the others; that child reads and checks the request and either closes
the connection (refusal) or becomes the call's handler (`agent.handler.run_handler` with
`HandlerContext.fork_server`), keeping the connection open until the call is over: its exit
closes the connection, which the agent reads as "finished".
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import time
from functools import partial

from ..call.domain_handler import HandlerContext, run_handler
from ..protocol.cmdline import check_fork_cmdline, parse_command
from ..protocol.errors import RemoteProtocolError
from ..protocol.messages import CMD_INFO_HEAD, CmdInfo, parse_cmd_info_head
from ..system.defaults import FORK_SERVER_SOCKET_TEMPLATE
from ..system.forking import fork_call
from ..transport.unixsock import listen_unix

__all__ = ["default_socket_path", "bind", "serve_forever", "read_request", "serve_connection"]

def default_socket_path(user: str | None) -> str:
    """`/var/run/qubes/qrexec-server.$USER.sock` for `user` (the program's `USER`); the
    effective user's name when that is None."""
    if user is None:
        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            user = str(os.geteuid())
    return FORK_SERVER_SOCKET_TEMPLATE % user


def bind(path: str) -> socket.socket:
    """A listening socket at `path`, a stale file there removed first. Mode 0600: whoever
    can connect runs commands as this user (the agent is root or this same user)."""
    return listen_unix(path, mode=0o600, backlog=socket.SOMAXCONN)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    parts: list[bytes] = []
    left = n
    while left:
        chunk = conn.recv(min(left, 1 << 16))
        if not chunk:
            raise RemoteProtocolError(f"short read: {n - left} of {n} bytes")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_request(conn: socket.socket) -> CmdInfo:
    """One `qrexec_cmd_info` and its cmdline, checked as
    docs/reference/protocol.md#fork-server-socket step 2 says.

    Raises `RemoteProtocolError` (or `OSError`) for anything that must be refused.
    """
    msgtype, domain, port, length = parse_cmd_info_head(_recv_exact(conn, CMD_INFO_HEAD.size))
    cmdline = _recv_exact(conn, length)
    parse_command(check_fork_cmdline(cmdline))
    return CmdInfo(msgtype, domain, port, cmdline)


def serve_connection(conn: socket.socket, ctx: HandlerContext) -> int:
    """Handle one accepted connection in its own process; returns the exit status."""
    try:
        info = read_request(conn)
    except (OSError, RemoteProtocolError) as err:
        ctx.log(f"refused a request from the agent: {err}")
        conn.close()
        return 1
    # `conn` stays open (unused) while the call runs: its close at exit means "finished"
    return run_handler(info.msgtype, info.connect_domain, info.connect_port, info.cmdline, ctx)


def serve_forever(listener: socket.socket, ctx: HandlerContext) -> None:
    """Accept connections forever, one child each. SIGCHLD is ignored: children are not
    waited for (the kernel reaps them); SIGPIPE is ignored."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        except OSError as err:
            ctx.log(f"accept: {err}")
            time.sleep(0.1)  # e.g. out of descriptors: do not spin
            continue
        try:
            # default signals in the child (its handler waits for the service it starts)
            fork_call(partial(serve_connection, conn, ctx), ctx.log, keep=[conn.fileno()])
        except OSError as err:
            ctx.log(f"cannot fork a handler: {err}")
        conn.close()
