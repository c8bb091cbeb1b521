"""Per-service configuration files (docs/reference/services.md#rpc-config): a TOML subset with
strict rejection rules.

Pure: takes the file's bytes, returns the settings and the warnings to log. Reading the file
from the `QUBES_RPC_CONFIG_PATH` directories is `lookup.load_service_config`.
"""

from __future__ import annotations

import os
import re

from ..protocol.records import record

__all__ = [
    "ServiceConfig",
    "DEFAULT_CONFIG",
    "RpcConfigError",
    "ParsedConfig",
    "parse_rpc_config",
]


@record
class ServiceConfig:
    """Settings of one service; the defaults apply when no file exists."""

    wait_for_session: bool = False
    force_user: str | None = None
    skip_service_descriptor: bool = False
    exit_on_client_eof: bool = False
    exit_on_service_eof: bool = False

    @property
    def socket_only_keys(self) -> tuple[str, ...]:
        """Names of the set keys that only socket and TCP services honour."""
        flags = (
            ("skip-service-descriptor", self.skip_service_descriptor),
            ("exit-on-client-eof", self.exit_on_client_eof),
            ("exit-on-service-eof", self.exit_on_service_eof),
        )
        return tuple(name for name, value in flags if value)

    @property
    def fork_server_allowed(self) -> bool:
        """Whether these settings let the agent hand the call to a fork server
        (docs/reference/protocol.md#fork-server-socket)."""
        return not self.socket_only_keys


DEFAULT_CONFIG = ServiceConfig()


class RpcConfigError(Exception):
    """A configuration that makes the call fail with 125; `str()` is the log message."""


@record
class ParsedConfig:
    config: ServiceConfig
    #: messages to log (unsupported keys, missing final newline); the file is still valid
    warnings: tuple[str, ...]


_KEY = re.compile(rb"[A-Za-z][A-Za-z0-9._-]*")
_BLANK = b" \t"
_MAX_INTEGER = 2**64 - 1

_Value = bool | int | str


def _lines(data: bytes) -> tuple[list[bytes], bool]:
    """Lines with their `\\n` (and one `\\r` before it) removed; flag: final newline missing."""
    pieces = data.split(b"\n")
    last = pieces.pop()
    lines = [line[:-1] if line.endswith(b"\r") else line for line in pieces]
    if last:
        # a final line without `\n` keeps its `\r` (docs/reference/services.md#syntax, as upstream's
        # getline loop)
        lines.append(last)
    return lines, bool(last)


def _strip_trailing_blanks(line: bytes) -> bytes:
    # the first character is never removed, so a line of blanks still reports leading whitespace
    return line[:1] + line[1:].rstrip(_BLANK)


def _parse_value(text: bytes, where: str) -> _Value:
    """One value and what may follow it (blanks, then an optional comment)."""
    if not text:
        raise RpcConfigError(f"{where}: Empty value")
    first = text[:1]
    if first == b"0":
        value: _Value = 0
        rest = text[1:]
        junk_message = "Unexpected junk after integer (only decimal integers without leading zeros)"
    elif first.isdigit():
        digits = re.match(rb"[0-9]+", text)
        assert digits is not None
        value = int(digits.group())
        if value > _MAX_INTEGER:
            raise RpcConfigError(f"{where}: Integer out of range")
        rest = text[digits.end() :]
        junk_message = "Unexpected junk after integer (only decimal integers without leading zeros)"
    elif text.startswith(b"true"):
        value, rest, junk_message = True, text[4:], "Unexpected junk after value"
    elif text.startswith(b"false"):
        value, rest, junk_message = False, text[5:], "Unexpected junk after value"
    elif first == b'"':
        raise RpcConfigError(f"{where}: Double-quoted strings not supported, use single quotes")
    elif first == b"'":
        if text.startswith(b"'''"):
            raise RpcConfigError(f"{where}: Triple-quoted strings not supported")
        end = text.find(b"'", 1)
        if end < 0:
            raise RpcConfigError(f"{where}: Unterminated quoted string")
        # user names are bytes on the system; keep every byte through the filesystem encoding
        value = os.fsdecode(text[1:end])
        rest = text[end + 1 :]
        junk_message = "Unexpected junk after value"
    else:
        raise RpcConfigError(f"{where}: Unsupported start of value: {text[:1]!r}")
    rest = rest.lstrip(_BLANK)
    if rest and not rest.startswith(b"#"):
        raise RpcConfigError(f"{where}: {junk_message}")
    return value


def _boolean(key: str, value: _Value, where: str, *, allow_01: bool = False) -> bool:
    if isinstance(value, bool):
        return value
    if allow_01 and isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise RpcConfigError(f"{where}: Invalid value {value!r} for {key!r}, a boolean is expected")


def parse_rpc_config(data: bytes, name: str = "<rpc-config>") -> ParsedConfig:
    """Parse one configuration file; `name` prefixes messages. Raises `RpcConfigError`."""
    if b"\0" in data:
        raise RpcConfigError(f"{name}: NUL byte in file")
    lines, missing_newline = _lines(data)
    warnings: list[str] = []
    if missing_newline:
        warnings.append(f"{name}:{len(lines)}: missing newline at EOF")
    values: dict[str, _Value] = {}
    wheres: dict[str, str] = {}
    for lineno, raw in enumerate(lines, 1):
        where = f"{name}:{lineno}"
        line = _strip_trailing_blanks(raw)
        if not line or line.startswith(b"#"):
            continue
        if line[:1] in (b" ", b"\t"):
            raise RpcConfigError(f"{where}: Unexpected whitespace at start of line")
        if line.startswith(b"["):
            raise RpcConfigError(f"{where}: TOML section headers not supported")
        key_match = _KEY.match(line)
        if key_match is None:
            raise RpcConfigError(f"{where}: Invalid character {line[:1]!r} at start of key")
        key = key_match.group().decode("ascii")
        rest = line[key_match.end() :].lstrip(_BLANK)
        if not rest.startswith(b"="):
            raise RpcConfigError(f"{where}: Missing '=' after key")
        value = _parse_value(rest[1:].lstrip(_BLANK), where)
        if key in values:
            raise RpcConfigError(f"{where}: Key {key!r} appears more than once")
        values[key] = value
        wheres[key] = where
        if key not in _KEYS:
            warnings.append(f"{where}: Unsupported key {key}")
    return ParsedConfig(_build(values, wheres, name), tuple(warnings))


_KEYS = frozenset(
    {
        "wait-for-session",
        "force-user",
        "skip-service-descriptor",
        "exit-on-client-eof",
        "exit-on-service-eof",
    }
)


def _build(values: dict[str, _Value], wheres: dict[str, str], name: str) -> ServiceConfig:
    def flag(key: str, *, allow_01: bool = False) -> bool:
        return _boolean(key, values.get(key, False), wheres.get(key, name), allow_01=allow_01)

    force_user = values.get("force-user")
    if force_user is not None and not isinstance(force_user, str):
        raise RpcConfigError(
            f"{wheres['force-user']}: Invalid value {force_user!r} for 'force-user',"
            " a string is expected"
        )
    config = ServiceConfig(
        wait_for_session=flag("wait-for-session", allow_01=True),
        force_user=force_user,
        skip_service_descriptor=flag("skip-service-descriptor"),
        exit_on_client_eof=flag("exit-on-client-eof"),
        exit_on_service_eof=flag("exit-on-service-eof"),
    )
    if config.force_user is not None and config.socket_only_keys:
        raise RpcConfigError(
            f"{name}: 'force-user' cannot be combined with {', '.join(config.socket_only_keys)}"
        )
    return config
