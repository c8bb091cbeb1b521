"""qrexec-fork-server: runs calls inside the user's session
(docs/reference/cli.md#qrexec-fork-server)."""

from __future__ import annotations

import logging
import os
import sys

from ..call.domain_handler import HandlerContext, load_call_modules, own_user_name
from ..system.environment import Environment
from ..system.log import setup
from . import entry
from .resident import without_tls

PROG = "qrexec-fork-server"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        sys.stderr.write(f"Usage: {PROG} [socket path]\n")
        return 1

    from ..agent.fork_server import (  # lazy: asyncio after without_tls()
        bind,
        default_socket_path,
        serve_forever,
    )

    setup(PROG)
    # each connection is served by a fork of this process: load the call's modules once
    load_call_modules()
    log = logging.getLogger(__name__).info
    env = Environment.current()
    env.log_problems(log)
    path = args[0] if args else default_socket_path(env.user)
    try:
        listener = bind(path)
    except OSError as err:
        log(f"cannot listen on {path}: {err}")
        return 1
    ctx = HandlerContext(
        env=env,
        own_version=env.max_protocol_version,
        own_user=own_user_name(),
        log=log,
        rpc_config_path=(),
        fork_server=True,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() != 0:
        # the socket is ready: whoever started us may go on
        listener.close()
        return 0
    serve_forever(listener, ctx)
    return 0  # pragma: no cover - serve_forever does not return


def run() -> None:
    without_tls()
    entry(main)


if __name__ == "__main__":
    run()
