"""qrexec-agent: the VM side of the control channel (docs/reference/cli.md#qrexec-agent)."""

from __future__ import annotations

import logging
import sys

from ..call.domain_handler import (
    HandlerContext,
    load_call_modules,
    own_user_name,
    run_packed_call,
)
from ..system import defaults
from ..system.environment import Environment
from ..system.log import Logger, setup
from ..system.spawner import start_spawner
from . import entry
from .args import GetoptError, getopt
from .resident import without_tls

USAGE = """\
usage: qrexec-agent [-h|--help] [-a|--agent-socket=PATH] [-s|--fork-server-socket=PATH] \
[-S|--no-fork-server]
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    agent_socket = defaults.AGENT_SOCKET
    fork_server: str | None = defaults.FORK_SERVER_SOCKET_TEMPLATE
    try:
        opts, _rest = getopt(
            args, "ha:s:S", ["help", "agent-socket=", "fork-server-socket=", "no-fork-server"],
            gnu=True,
        )
    except GetoptError as err:
        sys.stderr.write(f"qrexec-agent: {err}\n{USAGE}")
        return 2
    for opt, val in opts:
        if opt in ("-h", "--help"):
            sys.stderr.write(USAGE)
            return 2
        if opt in ("-a", "--agent-socket"):
            agent_socket = val
        elif opt in ("-s", "--fork-server-socket"):
            fork_server = val or None
        elif opt in ("-S", "--no-fork-server"):
            fork_server = None

    setup("qrexec-agent")
    env = Environment.current()
    log = logging.getLogger("pyqrexec.agent").info
    env.log_problems(log)
    own_user = own_user_name()
    # The call processes write their lines themselves, in the format `setup` gives the rest:
    # logging's record machinery costs ~25 µs a line here, and a call logs three.
    call_log = Logger("qrexec-agent")
    # forked before asyncio loads: the smaller the spawner, the cheaper each fork it makes
    ctx = HandlerContext.for_agent(env, env.max_protocol_version, own_user, call_log)
    spawner = start_spawner(lambda params: run_packed_call(params, ctx), call_log,
                            preload=load_call_modules)

    import asyncio  # lazy: asyncio after without_tls()

    from ..agent.agent import Agent, AgentOptions  # lazy: asyncio after without_tls()

    options = AgentOptions(
        agent_socket=agent_socket,
        fork_server_socket=fork_server,
        env=env,
        own_version=env.max_protocol_version,
        own_user=own_user,
        spawner=spawner,
    )

    async def amain() -> int:
        return await Agent(options).run()

    return asyncio.run(amain())


def run() -> None:
    without_tls()
    entry(main)


if __name__ == "__main__":
    run()
