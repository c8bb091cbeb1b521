"""qrexec-host's domain definitions: one TOML file (docs/qrexec-host.md), parsed and validated.

Pure: reads the file, returns `HostConfig` or raises `ConfigError` with a `FILE:LINE: message`
text (tomllib's own errors carry the line; for a semantic error the line of the offending key,
else of the domain's table header, is looked up in the text). A memory limit given as a
share of RAM reads /proc/meminfo once.
"""

from __future__ import annotations

import re
import tomllib
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from .limits import (
    DEFAULT_CPU_WEIGHT,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_MEMORY,
    DomainLimits,
    LimitError,
    host_memory,
    parse_cpu_weight,
    parse_max_processes,
    parse_memory,
)
from .remote_config import local_only_problem, relay_problem, remote_fields, remote_root

__all__ = [
    "ConfigError",
    "DomainConfig",
    "HostConfig",
    "DOMAIN_TYPES",
    "LABELS",
    "DOM0_UUID",
    "load",
    "parse",
    "validate_name",
    "derived_uuid",
    "icon_for",
]

DOMAIN_TYPES = ("AdminVM", "AppVM", "TemplateVM", "StandaloneVM", "DispVM", "RemoteVM")
#: Qubes' label names and their colours (system info reports the colour)
LABELS = {
    "red": "0xcc0000", "orange": "0xf57900", "yellow": "0xedd400", "green": "0x73d216",
    "gray": "0x555753", "blue": "0x3465a4", "purple": "0x75507b", "black": "0x000000",
}
DOM0_UUID = "00000000-0000-0000-0000-000000000000"
SANDBOX_MODES = ("auto", "bubblewrap", "plain")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
#: names the policy language or Qubes reserve
_RESERVED = ("anyvm", "dispvm", "none", "default", "Domain-0")
#: fixed namespace for uuids derived from a domain's name (uuid5)
_UUID_NAMESPACE = uuidlib.UUID("5c1d1f5e-7d9b-4a8e-9b7e-3f0e2a6b9c41")
#: resource limits: per domain, with defaults in [host] (docs/qrexec-host.md "Limits")
_LIMIT_KEYS = ("memory", "max_processes", "cpu_weight")
_DOMAIN_KEYS = {
    "type", "label", "icon", "tags", "default_dispvm", "template_for_dispvms", "guivm",
    "default_user", "user", "autostart", "root", "uuid", "internal", *_LIMIT_KEYS,
    "relayvm", "transport_rpc", "remote_name",
}
_HOST_KEYS = {"sandbox", "uid_base", *_LIMIT_KEYS}
#: first host uid/gid of the domains' user namespaces: above the ranges systemd and the
#: usual /etc/subuid allocations use, below 2^31 (docs/isolation.md)
DEFAULT_UID_BASE = 0x70000000
#: ids each domain gets: 0..65535 inside, as on an ordinary system
UID_RANGE = 65536


class ConfigError(Exception):
    """`FILE:LINE: message`."""


@dataclass(frozen=True)
class DomainConfig:
    name: str
    type: str
    root: Path
    label: str = "red"
    icon: str = ""
    tags: tuple[str, ...] = ()
    default_dispvm: str | None = None
    template_for_dispvms: bool = False
    guivm: str | None = None
    #: the daemon's DEFAULT_USER
    default_user: str = "root"
    #: host account the agent runs as; None = root (agent switches users per call)
    user: str | None = None
    autostart: bool = False
    uuid: str = ""
    internal: bool = False
    #: what bounds the domain's processes; None for dom0 (this host itself) and RemoteVMs
    limits: DomainLimits | None = None
    #: RemoteVM only (docs/remote.md): the local relay, its transport service, the name
    #: the qube has on the other host
    relayvm: str | None = None
    transport_rpc: str | None = None
    remote_name: str | None = None

    @property
    def colour(self) -> str:
        return LABELS.get(self.label, self.label)


@dataclass(frozen=True)
class HostConfig:
    path: Path
    domains: dict[str, DomainConfig] = field(default_factory=dict)
    sandbox: str = "auto"
    uid_base: int = DEFAULT_UID_BASE

    @property
    def dom0(self) -> DomainConfig:
        return self.domains["dom0"]


def validate_name(name: str) -> str | None:
    """Why `name` cannot name a domain, or None (Qubes' rules plus the policy keywords)."""
    if not name:
        return "domain name cannot be empty"
    if len(name) > 31:
        return f"domain name {name!r} is longer than 31 characters"
    if not _NAME_RE.fullmatch(name):
        return (f"domain name {name!r} contains invalid characters "
                "(must match ^[A-Za-z][A-Za-z0-9_.-]*$)")
    if name in _RESERVED:
        return f"domain name {name!r} is reserved"
    if name.endswith("-dm"):
        return f"domain name {name!r} cannot end with '-dm'"
    return None


def label_problem(label: str) -> str | None:
    if label in LABELS or re.fullmatch(r"0x[0-9a-fA-F]{6}", label):
        return None
    return f"unknown label {label!r} (one of {', '.join(LABELS)} or 0xRRGGBB)"


def tag_problem(tag: object) -> str | None:
    if isinstance(tag, str) and re.fullmatch(r"[A-Za-z0-9_-]+", tag):
        return None
    return f"invalid tag {tag!r}"


def user_problem(user: str) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", user):
        return None
    return f"invalid user name {user!r}"


def reference_problem(domains: dict[str, DomainConfig], d: DomainConfig,
                      key: str) -> str | None:
    """Why `d`'s default_dispvm or guivm cannot name what it names."""
    ref = d.default_dispvm if key == "default_dispvm" else d.guivm
    if ref is None:
        return None
    if ref not in domains:
        return f"{key} names unknown domain {ref!r}"
    if key == "default_dispvm" and not domains[ref].template_for_dispvms:
        return f"default_dispvm {ref!r} does not have template_for_dispvms = true"
    return None


def derived_uuid(name: str) -> str:
    """The stable uuid of a domain without one in the file (dom0: all zeros)."""
    return DOM0_UUID if name == "dom0" else str(uuidlib.uuid5(_UUID_NAMESPACE, name))


def icon_for(type_: str, label: str) -> str:
    prefix = {"AdminVM": "adminvm", "TemplateVM": "templatevm", "DispVM": "dispvm",
              "StandaloneVM": "standalonevm"}.get(type_, "appvm")
    return f"{prefix}-{label}" if label in LABELS else prefix


def load(path: str | Path) -> HostConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}:0: cannot read: {err}") from err
    return parse(text, p)


def parse(text: str, path: Path) -> HostConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}:{_toml_line(err)}: {err}") from err
    return _Parser(text, path, data).run()


def _toml_line(err: tomllib.TOMLDecodeError) -> int:
    found = re.search(r"\(at line (\d+)", str(err))
    return int(found.group(1)) if found else 0


class _Table:
    """One `[domains.NAME]` table being read: typed values, and errors at the key's line."""

    def __init__(self, parser: _Parser, name: str, t: dict[str, Any]) -> None:
        self.parser = parser
        self.name = name
        self.t = t
        self.header = parser._header_line("domains", name)

    def at(self, key: str) -> int:
        return self.parser._key_line("domains", self.name, key)

    def line(self, key: str) -> int:
        """The key's line where the key is given, else the table's header."""
        return self.at(key) if key in self.t else self.header

    def fail(self, key: str, message: str) -> NoReturn:
        raise self.parser.error(self.at(key), f"domain {self.name}: {message}")

    def check(self, key: str, why: str | None) -> None:
        if why:
            self.fail(key, why)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = self.t.get(key, default)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(
                k.__name__ for k in kind)
            self.fail(key, f"{key} must be of type {names}")
        return value


class _Parser:
    def __init__(self, text: str, path: Path, data: dict[str, Any]) -> None:
        self.lines = text.splitlines()
        self.path = path
        self.data = data
        self.base = path.resolve().parent
        self._total_memory: int | None = None
        self.raw_defaults: dict[str, Any] = {}

    # -- locating lines -------------------------------------------------------------------
    def _header_line(self, table: str, name: str | None = None) -> int:
        names = [table] if name is None else [
            f"{table}.{n}" for n in (name, f'"{name}"', f"'{name}'")]
        for i, line in enumerate(self.lines, 1):
            stripped = re.sub(r"\s+", "", line.split("#", 1)[0])
            if stripped in (f"[{n}]" for n in names):
                return i
        return 1 if name is None else self._header_line(table)

    def _key_line(self, table: str, name: str | None, key: str) -> int:
        start = self._header_line(table, name)
        key_re = re.compile(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(start, len(self.lines) + 1):
            line = self.lines[i - 1]
            if i > start and line.lstrip().startswith("["):
                break
            if key_re.match(line):
                return i
        return start

    def error(self, line: int, message: str) -> ConfigError:
        return ConfigError(f"{self.path}:{line}: {message}")

    # -- the file ------------------------------------------------------------------------
    def run(self) -> HostConfig:
        for key in self.data:
            if key not in ("host", "domains"):
                raise self.error(self._header_line(key) if isinstance(self.data[key], dict)
                                 else self._key_line("", None, key), f"unknown key {key!r}")
        host = self.data.get("host", {})
        if not isinstance(host, dict):
            raise self.error(self._key_line("", None, "host"), "'host' must be a table")
        for key in host:
            if key not in _HOST_KEYS:
                raise self.error(self._key_line("host", None, key), f"unknown key {key!r}")
        sandbox = host.get("sandbox", "auto")
        if sandbox not in SANDBOX_MODES:
            raise self.error(self._key_line("host", None, "sandbox"),
                             f"sandbox must be one of {', '.join(SANDBOX_MODES)}")
        uid_base = host.get("uid_base", DEFAULT_UID_BASE)
        if (not isinstance(uid_base, int) or isinstance(uid_base, bool)
                or not 65536 <= uid_base <= 2**31 - 16 * UID_RANGE):
            raise self.error(self._key_line("host", None, "uid_base"),
                             "uid_base must be a whole number from 65536 to "
                             f"{2**31 - 16 * UID_RANGE}")
        self.raw_defaults = {k: v for k, v in host.items() if k in _LIMIT_KEYS}
        self._limits(self.raw_defaults, lambda key: self._key_line("host", None, key),
                     "[host]")
        tables = self.data.get("domains", {})
        if not isinstance(tables, dict):
            raise self.error(self._key_line("", None, "domains"), "'domains' must be a table")
        if "dom0" not in tables:
            tables = {"dom0": {"type": "AdminVM"}, **tables}
        domains: dict[str, DomainConfig] = {}
        raw: dict[str, dict[str, Any]] = {}
        for name, table in tables.items():
            line = self._header_line("domains", name)
            if not isinstance(table, dict):
                raise self.error(line, f"domain {name!r} must be a table")
            raw[name] = table
        dom0_dispvm = raw["dom0"].get("default_dispvm") or None
        for name, table in raw.items():
            domains[name] = self._domain(name, table, dom0_dispvm)
        self._check_references(domains)
        return HostConfig(self.path, domains, sandbox, uid_base)

    def _domain(self, name: str, t: dict[str, Any], dom0_dispvm: object) -> DomainConfig:
        tb = _Table(self, name, t)
        why = validate_name(name)
        if why:
            raise self.error(tb.header, why)
        for key in t:
            if key not in _DOMAIN_KEYS:
                tb.fail(key, f"unknown key {key!r}")
        type_ = tb.get("type", str, "AdminVM" if name == "dom0" else "AppVM")
        if type_ not in DOMAIN_TYPES:
            tb.fail("type", f"unknown type {type_!r} (one of {', '.join(DOMAIN_TYPES)})")
        if (type_ == "AdminVM") != (name == "dom0"):
            raise self.error(tb.line("type"), "only dom0 is, and dom0 must be, of type AdminVM")
        label = tb.get("label", str, "black" if name == "dom0" else "red")
        tb.check("label", label_problem(label))
        tags = tuple(tb.get("tags", list, []))
        for tag in tags:
            tb.check("tags", tag_problem(tag))
        uuid = self._domain_uuid(tb)
        if type_ == "RemoteVM" or local_only_problem(t):
            return self._remote(name, t, tb.at, label, tags, uuid)
        return self._local(tb, type_, label, tags, uuid, dom0_dispvm)

    def _domain_uuid(self, tb: _Table) -> str:
        uuid: str = tb.get("uuid", str, "")
        if not uuid:
            return ""
        try:
            uuid = str(uuidlib.UUID(uuid))
        except ValueError:
            tb.fail("uuid", f"invalid uuid {uuid!r}")
        if (uuid == DOM0_UUID) != (tb.name == "dom0"):
            tb.fail("uuid", f"uuid {uuid} is dom0's")
        return uuid

    def _local(self, tb: _Table, type_: str, label: str, tags: tuple[str, ...], uuid: str,
               dom0_dispvm: object) -> DomainConfig:
        """The rest of a domain that runs on this host: its root, accounts and limits."""
        name = tb.name
        root = (self.base / tb.get("root", str, name)).resolve()
        if name != "dom0" and not root.is_dir():
            raise self.error(tb.line("root"),
                             f"domain {name}: root directory {root} does not exist")
        user = tb.get("user", str, "") or None
        if user == "root":
            user = None
        default_user = tb.get("default_user", str, user or "root")
        for key, value in (("user", user or ""), ("default_user", default_user)):
            tb.check(key, user_problem(value) if value else None)
        return DomainConfig(
            name=name, type=type_, root=root, label=label,
            icon=tb.get("icon", str, "") or icon_for(type_, label), tags=tags,
            default_dispvm=tb.get("default_dispvm", str, dom0_dispvm or "") or None,
            template_for_dispvms=tb.get("template_for_dispvms", bool, False),
            guivm=tb.get("guivm", str, "" if name == "dom0" else "dom0") or None,
            default_user=default_user, user=user,
            autostart=tb.get("autostart", bool, False) and name != "dom0",
            uuid=uuid or derived_uuid(name), internal=tb.get("internal", bool, False),
            limits=self._domain_limits(name, tb.t, tb.at),
        )

    def _remote(self, name: str, t: dict[str, Any], at: Callable[[str], int], label: str,
                tags: tuple[str, ...], uuid: str) -> DomainConfig:
        """A RemoteVM (remote_config.py); a local domain with a RemoteVM's key is an error."""
        if t.get("type") != "RemoteVM":
            key = next(k for k in ("relayvm", "transport_rpc", "remote_name") if k in t)
            raise self.error(at(key), f"domain {name}: {local_only_problem(t)}")
        guivm = t.get("guivm", "")
        if not isinstance(guivm, str):
            raise self.error(at("guivm"), f"domain {name}: guivm must be of type str")
        icon = t.get("icon", "")
        if not isinstance(icon, str):
            raise self.error(at("icon"), f"domain {name}: icon must be of type str")
        return DomainConfig(
            name=name, type="RemoteVM", root=remote_root(self.base, name), label=label,
            icon=icon or icon_for("RemoteVM", label), tags=tags, guivm=guivm or None,
            uuid=uuid or derived_uuid(name),
            **remote_fields(self, name, t, at, validate_name))

    def _domain_limits(self, name: str, t: dict[str, Any],
                       at: Callable[[str], int]) -> DomainLimits | None:
        given = [key for key in _LIMIT_KEYS if key in t]
        if name == "dom0":
            if given:
                raise self.error(at(given[0]), "domain dom0: dom0 is this host and has no "
                                 f"limits ({given[0]})")
            return None
        values = {**self.raw_defaults, **{key: t[key] for key in given}}

        def line(key: str) -> int:
            return at(key) if key in t else self._key_line("host", None, key)

        return self._limits(values, line, f"domain {name}")

    def _limits(self, values: dict[str, Any], line: Callable[[str], int],
                what: str) -> DomainLimits:
        parsers: dict[str, Callable[[Any], Any]] = {
            "memory": lambda v: parse_memory(v, self.total_memory),
            "max_processes": parse_max_processes, "cpu_weight": parse_cpu_weight}
        defaults = {"memory": DEFAULT_MEMORY, "max_processes": DEFAULT_MAX_PROCESSES,
                    "cpu_weight": DEFAULT_CPU_WEIGHT}
        parsed: dict[str, Any] = {}
        for key, parse_value in parsers.items():
            try:
                parsed[key] = parse_value(values.get(key, defaults[key]))
            except LimitError as err:
                raise self.error(line(key), f"{what}: {err}") from None
        return DomainLimits(**parsed)

    def total_memory(self) -> int:
        if self._total_memory is None:
            self._total_memory = host_memory()
        return self._total_memory

    def _check_references(self, domains: dict[str, DomainConfig]) -> None:
        seen: dict[str, str] = {}
        for d in domains.values():
            if d.uuid in seen:
                raise self.error(self._key_line("domains", d.name, "uuid"),
                                 f"domain {d.name}: uuid {d.uuid} is also {seen[d.uuid]}'s")
            seen[d.uuid] = d.name
            for key in ("default_dispvm", "guivm", "relayvm"):
                why = (relay_problem(domains, d) if key == "relayvm"
                       else reference_problem(domains, d, key))
                if why:
                    raise self.error(self._key_line("domains", d.name, key),
                                     f"domain {d.name}: {why}")
