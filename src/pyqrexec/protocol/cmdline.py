"""Command strings (docs/reference/protocol.md#command-strings)."""

from __future__ import annotations

from .constants import MAX_SERVICE_NAME_LEN, NOGUI_CMD_PREFIX, RPC_REQUEST_COMMAND
from .errors import RemoteProtocolError
from .records import record

__all__ = [
    "Command",
    "ServiceCall",
    "split_user",
    "parse_command",
    "strip_nul",
    "check_fork_cmdline",
    "replace_default_user",
]

_DEFAULT_USER_PREFIX = b"DEFAULT:"


@record
class ServiceCall:
    """The `QUBESRPC` part of a command."""

    #: descriptor as sent: SERVICE[+ARG]
    descriptor: bytes
    service: bytes
    #: None when the descriptor has no `+`
    argument: bytes | None
    source: bytes
    #: tokens after the source (dom0: requested target type and target)
    rest: tuple[bytes, ...]

    @property
    def lookup_descriptor(self) -> bytes:
        """Descriptor with the `+` made explicit (`SERVICE+` for no argument)."""
        return self.descriptor if self.argument is not None else self.descriptor + b"+"


@record
class Command:
    """A parsed command without its user."""

    nogui: bool
    #: set for QUBESRPC commands, None for shell commands
    service: ServiceCall | None
    #: the command text after `nogui:` (the shell command, or the whole QUBESRPC line)
    text: bytes


def strip_nul(cmdline: bytes) -> bytes:
    """The command up to its terminating NUL (or all of it if none)."""
    nul = cmdline.find(b"\0")
    return cmdline if nul < 0 else cmdline[:nul]


def check_fork_cmdline(cmdline: bytes) -> bytes:
    """A fork-server cmdline (docs/reference/protocol.md#fork-server-socket): non-empty, its only
    NUL at the last byte; the text without the NUL. Anything else means: close the connection."""
    if not cmdline or cmdline.find(b"\0") != len(cmdline) - 1:
        raise RemoteProtocolError("cmdline empty, not NUL-terminated or with an interior NUL")
    return cmdline[:-1]


def replace_default_user(cmdline: bytes, user: bytes) -> bytes:
    """docs/reference/protocol.md#client-socket step 4: a cmdline starting with exactly `DEFAULT:`
    gets the daemon's default user
    in place of `DEFAULT` (the colon stays); any other cmdline is returned unchanged."""
    if not cmdline.startswith(_DEFAULT_USER_PREFIX):
        return cmdline
    return user + cmdline[len(_DEFAULT_USER_PREFIX) - 1 :]


def split_user(cmdline: bytes) -> tuple[bytes, bytes]:
    """(user, command) split at the first `:` (step 1)."""
    user, sep, command = cmdline.partition(b":")
    if not sep:
        raise RemoteProtocolError("command has no USER: prefix")
    return user, command


def parse_command(command: bytes) -> Command:
    """Steps 2-9 on a command without user (and without its NUL)."""
    nogui = command.startswith(NOGUI_CMD_PREFIX)
    if nogui:
        command = command[len(NOGUI_CMD_PREFIX) :]
    if not command.startswith(RPC_REQUEST_COMMAND):
        return Command(nogui, None, command)
    rest = command[len(RPC_REQUEST_COMMAND) :]
    if not rest.startswith(b" "):
        raise RemoteProtocolError("QUBESRPC not followed by a space")
    rest = rest[1:]
    descriptor, sep, rest = rest.partition(b" ")
    if not sep:
        raise RemoteProtocolError("no source after the service descriptor")
    if not descriptor or len(descriptor) > MAX_SERVICE_NAME_LEN:
        raise RemoteProtocolError("bad service descriptor length")
    service, plus, argument = descriptor.partition(b"+")
    if not 1 <= len(service) <= 255:
        raise RemoteProtocolError("bad service name length")
    tokens = rest.split(b" ")
    source = tokens[0]
    if not source:
        raise RemoteProtocolError("empty source domain")
    call = ServiceCall(descriptor, service, argument if plus else None, source, tuple(tokens[1:]))
    return Command(nogui, call, command)
