"""qubes-rpc-multiplexer: the legacy shell dispatcher
(docs/reference/services.md#qubes-rpc-multiplexer), kept for scripts.

    qubes-rpc-multiplexer SERVICE[+ARG] REMOTE_DOMAIN [TARGET_TYPE TARGET]

Finds the handler, sets the call variables and replaces itself with the handler. Its stderr is
copied to the system log (tag `$1-$2`) as well as to the caller's stderr.
"""

from __future__ import annotations

import os
import sys

from ..services.launch import DEVNULL, find_program, launch
from ..services.syslogcopy import open_syslog_writer
from ..system.defaults import MULTIPLEXER_SERVICE_PATH
from ..system.environment import Environment
from . import entry

__all__ = ["main", "run"]

_UNSET = (
    b"QREXEC_REQUESTED_TARGET",
    b"QREXEC_REQUESTED_TARGET_KEYWORD",
    b"QREXEC_SERVICE_ARGUMENT",
)
#: `tee` copies the service's stderr (descriptor 4) to the caller's stderr and to the system
#: log (descriptor 3); it runs in the background of a shell that exits at once, so it is no
#: child of the service and holds neither the service's stdin nor its stdout
_COPY_STDERR = b'"$0" /dev/fd/3 <&4 4<&- &'


def _find_handler(service_full: str, path: str) -> str | None:
    service, plus, _ = service_full.partition("+")
    specific = service_full if plus else service_full + "+"
    for directory in (part for part in path.split(":") if part):
        for name in (specific, service):
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate) and os.path.getsize(candidate) > 0:
                return candidate
    return None


def _environment(base: Environment, argv: list[str]) -> dict[bytes, bytes]:
    env = {name: value for name, value in base.environb.items() if name not in _UNSET}
    full, remote = os.fsencode(argv[0]), os.fsencode(argv[1])
    if len(argv) == 4:
        target_type, target = os.fsencode(argv[2]), os.fsencode(argv[3])
        env[b"QREXEC_REQUESTED_TARGET_TYPE"] = target_type
        if target_type == b"name":
            env[b"QREXEC_REQUESTED_TARGET"] = target
        elif target_type == b"keyword":
            env[b"QREXEC_REQUESTED_TARGET_KEYWORD"] = target
    else:
        env[b"QREXEC_REQUESTED_TARGET_TYPE"] = b""
    env[b"QREXEC_REMOTE_DOMAIN"] = remote
    env[b"QREXEC_SERVICE_FULL_NAME"] = full
    _, plus, argument = full.partition(b"+")
    if plus:
        env[b"QREXEC_SERVICE_ARGUMENT"] = argument
    return env


def _copy_stderr_to_syslog(tag: str, env: Environment) -> None:
    """Point our stderr at a pipe read by `tee` (to the old stderr) and `logger`; best effort."""
    tee = find_program("tee", env.path)
    logger_fd = open_syslog_writer(tag, env) if tee is not None else None
    if tee is None or logger_fd is None:
        return
    to_tee_read, to_tee_write = os.pipe()
    try:
        pid = launch(
            b"/bin/sh",
            [b"sh", b"-c", _COPY_STDERR, os.fsencode(tee)],
            env.environb,
            (DEVNULL, 2, 2, logger_fd, to_tee_read),
        )
        os.waitpid(pid, 0)
        os.dup2(to_tee_write, 2)
    except OSError:
        pass
    finally:
        for fd in (to_tee_read, to_tee_write, logger_fd):
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "qubes-rpc-multiplexer"
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 4):
        print(
            f"{prog}: bad argument count, usage: {prog} SERVICE-NAME REMOTE-DOMAIN-NAME"
            " [REQUESTED_TARGET_TYPE REQUESTED_TARGET]",
            file=sys.stderr,
        )
        return 1
    base = Environment.current()
    # the multiplexer's own default, see MULTIPLEXER_SERVICE_PATH
    path = base.variables.get("QREXEC_SERVICE_PATH", MULTIPLEXER_SERVICE_PATH)
    handler = _find_handler(args[0], path)
    env = _environment(base, args)
    if handler is not None:
        _copy_stderr_to_syslog(f"{args[0]}-{args[1]}", base)
        _, plus, argument = args[0].partition("+")
        handler_argv = [handler, argument] if plus and argument else [handler]
        sys.stdout.flush()
        try:
            os.execve(handler, handler_argv, env)
        except OSError:
            pass
    print(f"{prog}: failed to execute handler for {args[0]}", file=sys.stderr)
    return 1


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
