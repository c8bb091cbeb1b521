"""Calls from inside a domain to a service in another one, as `qrexec-client-vm` makes them
(docs/client-library.md#inside-a-domain, docs/reference/protocol.md#trigger-socket).

A TRIGGER_SERVICE4 request on the agent's trigger socket; the agent answers with the data
channel's (domain, port), or closes the connection when the call is refused. The connection
stays open for the whole call: its close tells the agent that the call is over.
"""

from __future__ import annotations

import asyncio
import os
import socket

from ..protocol.errors import LocalProtocolError, RemoteProtocolError
from ..protocol.messages import client_trigger
from ..protocol.wire import EXEC_HEAD, parse_exec_params_only
from ..system.defaults import AGENT_SOCKET
from ..system.environment import Environment
from ..transport.aio import connect_unix
from .calls import AsyncCall, ChannelCall, accept_data_channel, run_to_end
from .errors import CallRefused, CallResult, SetupFailed

__all__ = ["AsyncDomainClient", "DEFAULT_AGENT_SOCKET"]

DEFAULT_AGENT_SOCKET = AGENT_SOCKET
#: `qrexec-client-vm`'s status for its own failures
_EXIT_FAILED = 1
class AsyncDomainClient:
    """Calls from a domain, for asyncio programs. Any number of calls may be in flight.

    `agent_socket`: the agent's trigger socket (`qrexec-client-vm -a`); `env`: the
    environment the calls follow as the CLI does, default this process's; `vchan_dir` and
    `own_domain` replace its `VCHAN_SOCKET_DIR` and `VCHAN_DOMAIN`; `connect_timeout`: how
    long the target may take to connect the data channel once the call is allowed (the CLI
    waits 120 s).
    """

    def __init__(self, *, agent_socket: str = DEFAULT_AGENT_SOCKET,
                 vchan_dir: str | None = None, own_domain: int | None = None,
                 connect_timeout: float | None = 120.0, env: Environment | None = None) -> None:
        self.env = env = Environment.current() if env is None else env
        self.agent_socket = agent_socket
        self.vchan_dir = env.vchan_socket_dir if vchan_dir is None else vchan_dir
        self.own_domain = env.vchan_domain if own_domain is None else own_domain
        self.connect_timeout = connect_timeout or None

    async def start(self, target: str, service: str, *, source: str | None = None,
                    stdin: bool = True) -> AsyncCall:
        """Call `service` (`NAME+ARGUMENT`) in `target` (a name, `@default`, `@dispvm`,
        `$`-keywords as the CLI takes them); `source`: the requested source of a relayed
        call (`qrexec-client-vm -s`). `stdin=False`: the remote stdin is empty.

        Raises CallRefused (status 126), or SetupFailed (status 1)."""
        try:
            request = client_trigger(os.fsencode(service), os.fsencode(target),
                                     os.fsencode(source or ""))
        except LocalProtocolError as err:
            raise ValueError(str(err)) from err
        loop = asyncio.get_running_loop()
        try:
            agent = await connect_unix(self.agent_socket)
        except OSError as err:
            raise SetupFailed(f"cannot talk to the agent: {err}", _EXIT_FAILED) from err
        try:
            return await self._call(loop, agent, request, stdin)
        except BaseException:
            agent.close()
            raise

    async def _call(self, loop: asyncio.AbstractEventLoop, agent: socket.socket,
                    request: bytes, stdin: bool) -> AsyncCall:
        try:
            await loop.sock_sendall(agent, request)
            answer = b""
            while len(answer) < EXEC_HEAD.size:
                chunk = await loop.sock_recv(agent, EXEC_HEAD.size - len(answer))
                if not chunk:
                    break
                answer += chunk
        except OSError as err:
            raise SetupFailed(f"cannot talk to the agent: {err}", _EXIT_FAILED) from err
        if not answer:
            raise CallRefused("Request refused")
        try:
            domain, port = parse_exec_params_only(answer)
        except RemoteProtocolError as err:
            raise SetupFailed(f"short answer from the agent: {err}", _EXIT_FAILED) from err
        channel = await accept_data_channel(self.env, self.vchan_dir, self.own_domain, domain,
                                            port, self.connect_timeout,
                                            "Data vchan connection failed", _EXIT_FAILED)
        return ChannelCall(channel, has_input=stdin, on_end=agent.close,
                           own_version=self.env.max_protocol_version)

    async def call(self, target: str, service: str, *, input: bytes | None = None,
                   source: str | None = None, timeout: float | None = None) -> CallResult:
        """Call `service` in `target` to its end: its status and all of its output. `input`
        goes to its stdin (None: an empty stdin); past `timeout` seconds the call is
        aborted and CallTimeout raised. A refused call raises CallRefused."""
        return await run_to_end(
            self.start(target, service, source=source, stdin=input is not None), input, timeout)
