"""argv and environment of an executable service
(docs/reference/services.md#arguments-and-environment,
docs/reference/services.md#starting-the-program, docs/reference/services.md#logging). Pure.

Everything here is bytes: service names, arguments and domain names come from other domains
and are passed to `execve` untouched, never through a shell's parser.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..protocol.cmdline import ServiceCall

__all__ = [
    "CALL_VARIABLES",
    "Environment",
    "valid_token_count",
    "call_variables",
    "inherited_environment",
    "service_environment",
    "service_argv",
    "login_wrapper_argv",
    "log_tag",
]

Environment = dict[bytes, bytes]

#: the variables that describe one call; a login shell must not let profile scripts change them
CALL_VARIABLES = (
    b"QREXEC_SERVICE_FULL_NAME",
    b"QREXEC_REMOTE_DOMAIN",
    b"QREXEC_SERVICE_ARGUMENT",
    b"QREXEC_REQUESTED_TARGET_TYPE",
    b"QREXEC_REQUESTED_TARGET",
    b"QREXEC_REQUESTED_TARGET_KEYWORD",
)
_KEPT = frozenset({b"QREXEC_SERVICE_PATH", b"QREXEC_AGENT_PID"})


def _tokens(call: ServiceCall) -> list[bytes]:
    # runs of spaces count as one separator
    return [call.descriptor, call.source, *(token for token in call.rest if token)]


def valid_token_count(call: ServiceCall) -> bool:
    """Executable services need exactly 2 or 4 tokens after `QUBESRPC`."""
    return len(_tokens(call)) in (2, 4)


def call_variables(call: ServiceCall) -> list[tuple[bytes, bytes]]:
    """The per-call `QREXEC_*` variables, in `CALL_VARIABLES` order, only those that are set."""
    tokens = _tokens(call)
    found: list[tuple[bytes, bytes]] = [
        (b"QREXEC_SERVICE_FULL_NAME", call.descriptor),
        (b"QREXEC_REMOTE_DOMAIN", call.source),
    ]
    if call.argument is not None:
        found.append((b"QREXEC_SERVICE_ARGUMENT", call.argument))
    if len(tokens) == 4:
        target_type, target = tokens[2], tokens[3]
        found.append((b"QREXEC_REQUESTED_TARGET_TYPE", target_type))
        if target_type == b"name":
            found.append((b"QREXEC_REQUESTED_TARGET", target))
        elif target_type == b"keyword":
            found.append((b"QREXEC_REQUESTED_TARGET_KEYWORD", target))
    else:
        found.append((b"QREXEC_REQUESTED_TARGET_TYPE", b""))
    return found


def inherited_environment(base: Mapping[bytes, bytes]) -> Environment:
    """`base` without the `QREXEC*` variables other than the two that are passed on."""
    return {
        name: value
        for name, value in base.items()
        if not name.startswith(b"QREXEC") or name in _KEPT
    }


def service_environment(
    base: Mapping[bytes, bytes],
    call: ServiceCall,
    agent_pid: int | None,
    extra: Mapping[bytes, bytes] | None = None,
) -> Environment:
    """The complete environment: cleaned `base`, `extra` (root mode's HOME etc.), call variables."""
    env = inherited_environment(base)
    if extra:
        env.update(extra)
    if agent_pid is not None:
        env[b"QREXEC_AGENT_PID"] = str(agent_pid).encode()
    env.update(call_variables(call))
    return env


def service_argv(path: bytes, call: ServiceCall) -> list[bytes]:
    """argv[0] is the path found; the argument follows only when non-empty."""
    return [path, call.argument] if call.argument else [path]


#: Runs as `sh -l -c SCRIPT sh NAME=VALUE... -- PROGRAM ARG...`: after the profile scripts it
#: enters the home directory, re-exports the call variables from its positional parameters (so
#: no profile can alter them and no value is ever parsed as shell text) and execs the program.
#: The explicit checks give 125 for what `execve` would refuse, as the direct path does.
_LOGIN_WRAPPER = b"""\
cd -- "$HOME" 2>/dev/null || echo "warning: cannot enter home directory $HOME" >&2
unset QREXEC_SERVICE_FULL_NAME QREXEC_REMOTE_DOMAIN QREXEC_SERVICE_ARGUMENT \
QREXEC_REQUESTED_TARGET_TYPE QREXEC_REQUESTED_TARGET QREXEC_REQUESTED_TARGET_KEYWORD
while [ "$1" != -- ]; do export "$1"; shift; done
shift
if [ ! -e "$1" ] && [ ! -L "$1" ]; then exit 127; fi
if [ -d "$1" ] || [ ! -x "$1" ]; then exit 125; fi
exec "$@"
"""


def login_wrapper_argv(argv: list[bytes], call: ServiceCall) -> list[bytes]:
    """`/bin/sh -l` command line that starts `argv` with the call variables of `call`."""
    exports = [name + b"=" + value for name, value in call_variables(call)]
    return [b"/bin/sh", b"-l", b"-c", _LOGIN_WRAPPER, b"sh", *exports, b"--", *argv]


def log_tag(call: ServiceCall) -> str:
    """System-log tag for a service's stderr: `<descriptor as received>-<source>`."""
    return os.fsdecode(call.descriptor + b"-" + call.source)
