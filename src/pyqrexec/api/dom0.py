"""dom0 calls into domains, as `qrexec-client -d DOMAIN` makes them
(docs/client-library.md#dom0, docs/reference/protocol.md#client-socket).

One request on the domain's daemon client socket (EXEC_CMDLINE, port 0) names the data
channel; this process listens on it and the domain's agent connects. A call to dom0 itself
starts the service as a child process, where `qrexec-client -d dom0` would become it.
"""

from __future__ import annotations

import asyncio
import asyncio.subprocess as aio_subprocess
import os

from ..call.dom0_local import exec_failure, prepare_dom0_service
from ..client.daemon_socket import DaemonNotRunning as _NotRunning
from ..client.daemon_socket import read_answer_async, read_hello_async, send_request_async
from ..protocol.constants import DOM0_NAMES, EXIT_PROBLEM, MsgType
from ..protocol.errors import ProtocolError
from ..system.defaults import DAEMON_SOCKET_DIR
from ..system.environment import Environment
from .calls import AsyncCall, ChannelCall, LocalCall, accept_data_channel, run_to_end
from .errors import CallResult, DaemonNotRunning, SetupFailed

__all__ = ["AsyncDom0Client", "DOM0_NAMES", "service_command"]

#: how `qrexec-client -d` names dom0 itself


def service_command(service: str, argument: str = "", source: str = "dom0",
                    user: str = "DEFAULT") -> str:
    """The command line that runs `service+argument` as a qrexec service called by `source`
    (docs/reference/cli.md#qrexec-client-modes)."""
    name = f"{service}+{argument}" if argument else service
    return f"{user}:QUBESRPC {name} {source}"


class AsyncDom0Client:
    """Calls from dom0, for asyncio programs. Any number of calls may be in flight at once.

    `socket_dir`: the daemons' client sockets (`qrexec-client --socket-dir`);
    `env`: the environment the calls follow as the CLI does (vchans, protocol version, what
    dom0 services inherit), default this process's; `vchan_dir` and `own_domain` replace its
    `VCHAN_SOCKET_DIR` and `VCHAN_DOMAIN`; `connect_timeout`: how long the domain's agent may
    take to connect the data channel (`qrexec-client -w`, 0 or None: no limit).
    """

    def __init__(self, *, socket_dir: str = DAEMON_SOCKET_DIR, vchan_dir: str | None = None,
                 own_domain: int | None = None, connect_timeout: float | None = 10.0,
                 env: Environment | None = None) -> None:
        self.env = env = Environment.current() if env is None else env
        self.socket_dir = socket_dir
        self.vchan_dir = env.vchan_socket_dir if vchan_dir is None else vchan_dir
        self.own_domain = env.vchan_domain if own_domain is None else own_domain
        self.connect_timeout = connect_timeout or None

    async def start(self, domain: str, command: str, *, stdin: bool = True) -> AsyncCall:
        """Start `command` (`USER:COMMAND`, or a `service_command`) in `domain` and return
        the call in flight. `stdin=False`: the remote stdin is empty (ends at once).

        Raises DaemonNotRunning, or SetupFailed (status 125) when the daemon or the agent
        fails before the call starts."""
        if domain in DOM0_NAMES:
            return await _start_local(command, stdin, self.env)
        # HELLO and request in one write, as qrexec-client sends them
        # (docs/reference/protocol.md#hello)
        try:
            sock = await send_request_async(self.socket_dir, domain, MsgType.EXEC_CMDLINE,
                                            os.fsencode(command) + b"\0")
        except _NotRunning as err:
            raise DaemonNotRunning(str(err.strerror)) from err
        except OSError as err:
            raise SetupFailed(f"cannot talk to the qrexec daemon of {domain}: {err}",
                              EXIT_PROBLEM) from err
        try:
            try:
                session = await read_hello_async(sock, MsgType.EXEC_CMDLINE)
            except (OSError, EOFError, ValueError, ProtocolError) as err:
                raise SetupFailed(f"cannot talk to the qrexec daemon of {domain}: {err}",
                                  EXIT_PROBLEM) from err
            try:
                remote, port = await read_answer_async(sock, session)
            except (OSError, EOFError, ValueError, ProtocolError) as err:
                raise SetupFailed(f"request to the qrexec daemon of {domain} failed: {err}",
                                  EXIT_PROBLEM) from err
        finally:
            sock.close()
        channel = await accept_data_channel(self.env, self.vchan_dir, self.own_domain, remote,
                                            port, self.connect_timeout,
                                            "data vchan connection failed", EXIT_PROBLEM)
        return ChannelCall(channel, has_input=stdin, no_hello_status=EXIT_PROBLEM,
                           own_version=self.env.max_protocol_version)

    async def start_service(self, domain: str, service: str, argument: str = "", *,
                            stdin: bool = True) -> AsyncCall:
        """Start qrexec service `service+argument` in `domain`, called by dom0."""
        return await self.start(domain, service_command(service, argument), stdin=stdin)

    async def run(self, domain: str, command: str, *, input: bytes | None = None,
                  timeout: float | None = None) -> CallResult:
        """Run `command` in `domain` to its end: its status and all of its output. `input`
        goes to its stdin (None: an empty stdin); past `timeout` seconds the call is
        aborted and CallTimeout raised."""
        return await run_to_end(self.start(domain, command, stdin=input is not None), input,
                                timeout)

    async def run_service(self, domain: str, service: str, argument: str = "", *,
                          input: bytes | None = None,
                          timeout: float | None = None) -> CallResult:
        return await self.run(domain, service_command(service, argument), input=input,
                              timeout=timeout)


async def _start_local(command: str, stdin: bool, env: Environment) -> AsyncCall:
    """dom0 -> dom0: look the service up as `qrexec-client -d dom0` does, then start it."""
    messages: list[str] = []
    found = prepare_dom0_service(os.fsencode(command), messages.append, env)
    if isinstance(found, int):
        return LocalCall(None, found, "\n".join(messages))
    try:
        proc = await asyncio.create_subprocess_exec(
            found.path, *found.argv[1:], env=found.env,
            stdin=aio_subprocess.PIPE if stdin else aio_subprocess.DEVNULL,
            stdout=aio_subprocess.PIPE, stderr=aio_subprocess.PIPE)
    except OSError as err:
        status = exec_failure(found, err, messages.append)
        return LocalCall(None, status, "\n".join(messages))
    return LocalCall(proc)
