"""Finding a service and its configuration file (docs/reference/services.md#service-lookup,
docs/reference/services.md#where-the-files-are).

Both searches try `DIR/SERVICE+ARG` in every directory, then `DIR/SERVICE` in every directory,
with the same per-candidate rules; only what is done with the entry found differs.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Callable, Iterator, Sequence

from ..protocol.cmdline import ServiceCall
from ..protocol.constants import EXIT_PROBLEM, EXIT_SERVICE_NOT_FOUND
from ..protocol.records import record
from .rpcconfig import DEFAULT_CONFIG, ParsedConfig, RpcConfigError, parse_rpc_config
from .tcptarget import is_tcp_link

__all__ = [
    "ServiceKind",
    "Entry",
    "LookupFailure",
    "candidates",
    "find_entry",
    "find_service",
    "load_service_config",
]

_NAME_MAX = 255
_PATH_MAX = 1024


class ServiceKind(enum.Enum):
    EXECUTABLE = "executable"
    SOCKET = "socket"
    TCP = "tcp"
    #: anything else: a regular file without execute permission, a fifo, a device
    OTHER = "other"


@record
class Entry:
    """A directory entry found by the search."""

    path: bytes
    kind: ServiceKind
    #: the symlink's target text, for TCP services
    link_text: bytes | None = None


@record
class LookupFailure:
    status: int
    message: str


def candidates(dirs: Sequence[str], names: Sequence[bytes]) -> Iterator[bytes]:
    """Paths in search order: each name in every directory before the next name."""
    for name in names:
        if len(name) > _NAME_MAX:
            continue
        for directory in dirs:
            yield os.path.join(os.fsencode(directory), name)


def _classify(path: bytes) -> Entry | None | LookupFailure:
    """One candidate: its entry, None when absent, or a lookup error."""
    if len(path) >= _PATH_MAX:
        return LookupFailure(EXIT_PROBLEM, f"Service path too long: {os.fsdecode(path)}")
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            link_text = os.readlink(path)
            if is_tcp_link(link_text):
                return Entry(path, ServiceKind.TCP, link_text)
            st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        return LookupFailure(EXIT_PROBLEM, f"Error looking up {os.fsdecode(path)}: {err.strerror}")
    if stat.S_ISSOCK(st.st_mode):
        return Entry(path, ServiceKind.SOCKET)
    if os.access(path, os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return Entry(path, ServiceKind.EXECUTABLE)
    return Entry(path, ServiceKind.OTHER)


def find_entry(dirs: Sequence[str], names: Sequence[bytes]) -> Entry | None | LookupFailure:
    """The first existing candidate, None when there is none, or the first lookup error."""
    for path in candidates(dirs, names):
        found = _classify(path)
        if found is not None:
            return found
    return None


def _names(call: ServiceCall) -> tuple[bytes, bytes]:
    return call.lookup_descriptor, call.service


def find_service(call: ServiceCall, dirs: Sequence[str]) -> Entry | LookupFailure:
    """The service for a call; `OTHER` entries are already turned into 125."""
    found = find_entry(dirs, _names(call))
    if found is None:
        return LookupFailure(
            EXIT_SERVICE_NOT_FOUND,
            f"Service not found: {os.fsdecode(call.lookup_descriptor)}",
        )
    if isinstance(found, Entry) and found.kind is ServiceKind.OTHER:
        return LookupFailure(EXIT_PROBLEM, f"Unknown service type: {os.fsdecode(found.path)}")
    return found


def _read_file(path: bytes) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def load_service_config(
    call: ServiceCall,
    dirs: Sequence[str],
    read: Callable[[bytes], bytes] = _read_file,
) -> ParsedConfig | LookupFailure:
    """The rpc-config of a call (defaults when no file exists), or 125 with the reason."""
    found = find_entry(dirs, _names(call))
    if found is None:
        return ParsedConfig(DEFAULT_CONFIG, ())
    if isinstance(found, LookupFailure):
        return found
    try:
        data = read(found.path)
        return parse_rpc_config(data, os.fsdecode(found.path))
    except OSError as err:
        reason = err.strerror or str(err)
        return LookupFailure(EXIT_PROBLEM, f"Failed to load {os.fsdecode(found.path)}: {reason}")
    except RpcConfigError as err:
        return LookupFailure(EXIT_PROBLEM, str(err))
