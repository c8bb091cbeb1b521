"""qrexec-agent: the VM side of the control channel (docs/reference/cli.md#qrexec-agent)."""

from __future__ import annotations

import logging
import sys

from ..call.domain_handler import own_user_name
from ..system import defaults
from ..system.environment import Environment
from ..system.log import setup
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

    import asyncio  # lazy: asyncio after without_tls()

    from ..agent.agent import Agent, AgentOptions  # lazy: asyncio after without_tls()

    setup("qrexec-agent")
    env = Environment.current()
    env.log_problems(logging.getLogger(__name__).info)
    options = AgentOptions(
        agent_socket=agent_socket,
        fork_server_socket=fork_server,
        env=env,
        own_version=env.max_protocol_version,
        own_user=own_user_name(),
    )

    async def amain() -> int:
        return await Agent(options).run()

    return asyncio.run(amain())


def run() -> None:
    without_tls()
    entry(main)


if __name__ == "__main__":
    run()
