"""RemoteVM domains of qrexec-host's TOML file (docs/remote.md): a qube that lives on another
host, reached through a local relay domain.

Kept apart from config.py's `_Parser._domain`: a RemoteVM has no root, agent, limits or
disposables, only the three properties saying how to reach it, so it shares little with a
local domain beyond the name, label, tags and uuid.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

__all__ = ["REMOTE_KEYS", "DEFAULT_TRANSPORT", "relay_tag", "remote_fields", "remote_root",
           "relay_problem", "local_only_problem"]

#: the keys a RemoteVM table may have (the rest belong to local domains)
REMOTE_KEYS = frozenset({"type", "relayvm", "transport_rpc", "remote_name", "label", "icon",
                         "tags", "uuid", "guivm"})
#: the keys only a RemoteVM has
_OWN_KEYS = ("relayvm", "transport_rpc", "remote_name")
#: the transport shipped with pyqrexec (OpenSSH, docs/remote.md)
DEFAULT_TRANSPORT = "qubesair.SSHProxy"
#: a service name as a policy rule's service column takes it (no `+`, no `/`)
_SERVICE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class _Errors(Protocol):
    def error(self, line: int, message: str) -> Exception: ...


def relay_tag(relayvm: str) -> str:
    """The tag every RemoteVM carries, so rules can name all qubes behind one relay."""
    return f"relayvm-{relayvm}"


def remote_fields(p: _Errors, name: str, t: Mapping[str, Any], at: Callable[[str], int],
                  validate_name: Callable[[str], str | None]) -> dict[str, Any]:
    """The RemoteVM-only fields of domain `name` (table `t`): relayvm, transport_rpc,
    remote_name, with the errors pointing at their lines; the common keys are the caller's."""
    for key in t:
        if key not in REMOTE_KEYS:
            raise p.error(at(key), f"domain {name}: {key!r} is not a property of a RemoteVM "
                          f"(one of {', '.join(sorted(REMOTE_KEYS))})")
    out: dict[str, Any] = {}
    for key, default in (("relayvm", None), ("transport_rpc", DEFAULT_TRANSPORT),
                         ("remote_name", name)):
        value = t.get(key, default)
        if value is None:
            raise p.error(at("type"), f"domain {name}: a RemoteVM needs relayvm "
                          "(the local domain carrying its calls)")
        if not isinstance(value, str):
            raise p.error(at(key), f"domain {name}: {key} must be of type str")
        out[key] = value
    why = validate_name(out["relayvm"])
    if why is None and out["relayvm"] == name:
        why = "a RemoteVM cannot be its own relay"
    why = why or validate_name(out["remote_name"])
    if why is None and not _SERVICE_RE.fullmatch(out["transport_rpc"]):
        why = f"transport_rpc {out['transport_rpc']!r} is not a service name"
    if why:
        raise p.error(at("relayvm") if "relayvm" in t else at("type"), f"domain {name}: {why}")
    return out


def local_only_problem(t: Mapping[str, Any]) -> str | None:
    """Why a local domain's table cannot have what it has (a RemoteVM property)."""
    for key in _OWN_KEYS:
        if key in t:
            return f"{key} is a property of RemoteVMs only (type = \"RemoteVM\")"
    return None


class _Domain(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def relayvm(self) -> str | None: ...


def relay_problem(domains: Mapping[str, _Domain], d: _Domain) -> str | None:
    """Why `d`'s relay cannot carry its calls: it must be a local domain other than dom0
    (the transport service runs in it, with network access to the other host)."""
    if d.relayvm is None:
        return None
    relay = domains.get(d.relayvm)
    if relay is None:
        return f"relayvm names unknown domain {d.relayvm!r}"
    if relay.type in ("RemoteVM", "AdminVM"):
        return f"relayvm {d.relayvm!r} is a {relay.type}, not a local qube"
    return None


def remote_root(base: Path, name: str) -> Path:
    """A RemoteVM has no files here; its `root` is a placeholder no code opens."""
    return base / f".remote-{name}"
