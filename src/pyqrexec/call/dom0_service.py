"""A VM -> dom0 call, dom0's half (docs/reference/protocol.md#vm-to-dom0 steps 4-5,
docs/reference/protocol.md#legacy-connect-mode to dom0).

`run_dom0_service` starts the dom0 service for a command `QUBESRPC svc+arg SRC TYPE TARGET`
(or a shell command, legacy `qrexec-client -c` only), connects the data channel as its client
(the caller in the VM is the server) and relays until the service is over. It is synchronous
and writes nothing to stdout: the daemon's request worker runs it in a forked child, and
`qrexec-client -c ... -d dom0` runs it directly. The service's stderr is this process's stderr
(the daemon log); the caller receives a `STDERR` EOF right after HELLO.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol.cmdline import Command, parse_command, strip_nul
from ..protocol.constants import EXIT_PROBLEM
from ..protocol.errors import RemoteProtocolError
from ..services.session import run_session_waiter
from ..services.spawn import (
    Executor,
    Failed,
    SpawnContext,
    Started,
    service_config_for,
    start_command,
)
from ..system.environment import Environment
from ..transport import vchan
from .service_side import DOM0_FAILURE_EOFS, relay_started, send_hello, send_status_only
from .traffic import Traffic

__all__ = ["WORKER_CONNECT_TIMEOUT", "Dom0CallResult", "run_dom0_service"]

#: dom0 request worker's data connect timeout (docs/reference/protocol.md#timeouts)
WORKER_CONNECT_TIMEOUT = 5.0


def _ignore(message: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Dom0CallResult:
    """How a dom0 service call ended."""

    #: the service's status (sent as EXIT_CODE), or 127/125 when it did not run
    status: int
    #: True: the service ran and `status` is its own; False: the call failed before or
    #: around it (parse, rpc-config, lookup, spawn, data connect, HELLO, broken channel)
    service_ran: bool
    #: the data that passed from the caller to the service and back (payload bytes),
    #: None when the service did not run; a measurement, not part of the outcome's identity
    traffic: Traffic | None = field(default=None, compare=False)

    @property
    def worker_status(self) -> int:
        """Exit status of a daemon request worker: 0 once the service ran
        (docs/reference/protocol.md#vm-to-dom0 step 5)."""
        return 0 if self.service_ran else self.status


def run_dom0_service(
    command: bytes,
    caller_domid: int,
    port: int,
    *,
    timeout: float | None = WORKER_CONNECT_TIMEOUT,
    remote_domain: bytes | None = None,
    env: Environment,
    log: Callable[[str], None] = _ignore,
    own_version: int | None = None,
) -> Dom0CallResult:
    """Serve one call to dom0 on the data port `port` of the caller `caller_domid`.

    `command` is the command without a user part (a trailing NUL is allowed). The service
    sees `QREXEC_REMOTE_DOMAIN` = the command's source (`remote_domain` for a shell command,
    where there is no source token). `timeout` bounds the data connect (None: no limit).
    `env` gives the settings (service and rpc-config directories, vchans, the protocol
    version unless `own_version`) and the service's base environment.
    """
    if own_version is None:
        own_version = env.max_protocol_version
    text = strip_nul(command)
    started = _start(text, remote_domain, env, log)
    try:
        channel = vchan.connect(env.vchan_socket_dir, caller_domid, env.vchan_domain, port,
                                timeout, pair_dirs=env.vchan_pair_dirs)
    except OSError as err:
        log(f"data vchan connection failed: {err}")
        if isinstance(started, tuple):
            _abandon(started[0])
        return Dom0CallResult(EXIT_PROBLEM, False)
    try:
        send_hello(channel, own_version)
    except OSError as err:  # the caller is gone already
        log(f"data channel: {err}")
        channel.close()
        if isinstance(started, Failed):
            return Dom0CallResult(started.status, False)
        _abandon(started[0])
        return Dom0CallResult(EXIT_PROBLEM, False)
    if isinstance(started, Failed):
        log(started.message)
        log(f"failed to spawn process (exited {started.status}): {os.fsdecode(text)}")
        try:
            send_status_only(channel, own_version, started.status, log, DOM0_FAILURE_EOFS)
        except OSError as err:
            log(f"data channel: {err}")
        finally:
            channel.close()
        return Dom0CallResult(started.status, False)
    service, parsed = started
    traffic = Traffic()
    status = relay_started(channel, service, parsed, text, own_version, log, traffic=traffic)
    if status < 0:
        return Dom0CallResult(EXIT_PROBLEM, False, traffic)
    return Dom0CallResult(status, True, traffic)


def _start(
    text: bytes, remote_domain: bytes | None, env: Environment, log: Callable[[str], None]
) -> tuple[Started, Command] | Failed:
    """Parse, configure, wait for the session if asked, start: docs/reference/protocol.md#vm-to-dom0
    step 4 before connect."""
    try:
        parsed = parse_command(text)
    except RemoteProtocolError as err:
        return Failed(EXIT_PROBLEM, f"cannot parse command {text!r}: {err}")
    source = parsed.service.source if parsed.service is not None else remote_domain
    service_path = env.service_path
    ctx = SpawnContext(
        executor=Executor.DOM0,
        service_path=service_path,
        env=env,
        rpc_config_path=env.rpc_config_path,
        log=log,
        shell_env={b"QREXEC_REMOTE_DOMAIN": source} if source is not None else {},
    )
    config = service_config_for(parsed, ctx)
    if isinstance(config, Failed):
        return config
    if config.wait_for_session and parsed.service is not None:
        run_session_waiter(service_path, parsed.service.source, log, env.environb)
    result = start_command(parsed, "", ctx, config)
    if isinstance(result, Started):
        return result, parsed
    if isinstance(result, Failed):
        return result
    # not reachable without just-exec; treat as a qrexec problem rather than assert
    return Failed(EXIT_PROBLEM, "service detached unexpectedly")


def _abandon(started: Started) -> None:
    """No caller to relay to: close the service's streams (it sees EOF / EPIPE)."""
    for sock in {id(started.stdin): started.stdin, id(started.stdout): started.stdout}.values():
        sock.close()
    if started.stderr is not None:
        os.close(started.stderr)
