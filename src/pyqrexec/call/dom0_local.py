"""dom0 -> dom0 calls: `qrexec-client -d dom0 DEFAULT:QUBESRPC ...`
(docs/reference/cli.md#qrexec-client-modes, docs/reference/services.md#who-runs-services).

The calling process becomes the service (`execve`), so the service's status is the client's
own and its stdin/stdout/stderr are the client's. Only executables can be started this way.
`exec_dom0_service` returns only when the service could not be started: 127 or 125.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from ..protocol.cmdline import parse_command
from ..protocol.constants import EXIT_PROBLEM, EXIT_SERVICE_NOT_FOUND
from ..protocol.errors import RemoteProtocolError
from ..services.environment import service_argv, service_environment, valid_token_count
from ..services.lookup import (
    LookupFailure,
    ServiceKind,
    find_service,
    load_service_config,
)
from ..services.session import run_session_waiter
from ..system.environment import Environment

__all__ = ["DEFAULT_PREFIX", "LocalService", "exec_dom0_service", "exec_failure",
           "prepare_dom0_service"]

#: dom0 -> dom0 commands must start with exactly these bytes
DEFAULT_PREFIX = b"DEFAULT:"


def _quiet(message: str) -> None:
    pass


class LocalService:
    """A dom0 service ready to start: its executable, argv and environment."""

    __slots__ = ("path", "argv", "env")

    def __init__(self, path: bytes, argv: list[bytes], env: dict[bytes, bytes]) -> None:
        self.path = path
        self.argv = argv
        self.env = env


def exec_dom0_service(cmdline: bytes, log: Callable[[str], None], env: Environment) -> int:
    """Replace this process with the service `cmdline` asks for; on failure its status.

    `log` receives failures only: nothing is written on success.
    """
    found = prepare_dom0_service(cmdline, log, env)
    if isinstance(found, int):
        return found
    sys.stdout.flush()
    sys.stderr.flush()
    # Python ignores SIGPIPE; a service starts with default dispositions and no mask
    for sig in (signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        os.execve(found.path, found.argv, found.env)
    except OSError as err:
        return exec_failure(found, err, log)


def exec_failure(service: LocalService, err: OSError, log: Callable[[str], None]) -> int:
    """The status for a service that could not be executed."""
    log(f"failed to execute {os.fsdecode(service.path)}: {err.strerror}")
    if isinstance(err, FileNotFoundError):
        return EXIT_SERVICE_NOT_FOUND
    return EXIT_PROBLEM


def prepare_dom0_service(cmdline: bytes, log: Callable[[str], None],
                         env: Environment) -> LocalService | int:
    """What `exec_dom0_service` would execute for `cmdline`, or (after logging why) the
    status of the failure. Waits for the session first when the service's rpc-config asks.
    The service inherits `env`."""
    if not cmdline.startswith(DEFAULT_PREFIX):
        log("dom0 -> dom0 commands must be prefixed with DEFAULT:")
        return EXIT_PROBLEM
    try:
        command = parse_command(cmdline[len(DEFAULT_PREFIX) :])
    except RemoteProtocolError as err:
        log(f"cannot parse command {cmdline!r}: {err}")
        return EXIT_PROBLEM
    call = command.service
    if call is None:
        log("dom0 -> dom0 commands must be QUBESRPC service calls")
        return EXIT_PROBLEM
    service_path = env.service_path
    # dom0 skips the rpc-config of nogui commands (docs/reference/services.md#where-the-files-are)
    if not command.nogui:
        config = load_service_config(call, env.rpc_config_path)
        if isinstance(config, LookupFailure):
            log(config.message)
            return config.status
        if config.config.wait_for_session:
            run_session_waiter(service_path, call.source, _quiet, env.environb)
    found = find_service(call, service_path)
    if isinstance(found, LookupFailure):
        log(found.message)
        return found.status
    if found.kind is not ServiceKind.EXECUTABLE:
        log(f"{found.kind.value} services not supported for dom0 -> dom0 calls")
        return EXIT_PROBLEM
    if not valid_token_count(call):
        log("invalid number of arguments")
        return EXIT_PROBLEM
    return LocalService(found.path, service_argv(found.path, call),
                        service_environment(env.environb, call, None))
