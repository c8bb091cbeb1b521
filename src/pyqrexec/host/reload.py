"""`qrexec-host reload`: the TOML file read again and applied to a running host
(docs/qrexec-host.md, "reload").

Pure: compares the domains the manager has with the file's and says what to add, remove and
change, or why nothing may change. What a running domain was started with (its sandbox: root,
account, type, uuid, limits) cannot change under it; what the policy sees can, as `prefs`
changes it. All or nothing: one refusal and no domain changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..policy.errors import AccessDenied
from ..policy.loaders import DiskFiles, load_policy
from .config import DomainConfig, HostConfig

__all__ = ["FIXED_WHILE_RUNNING", "ReloadPlan", "ReloadRefused", "plan_reload",
           "policy_problem"]

#: what a running domain's sandbox, agent and daemon were made from
FIXED_WHILE_RUNNING = ("type", "root", "user", "uuid", "limits")
#: [host] settings `up` decided once
_HOST_FIXED = ("sandbox", "uid_base")


class ReloadRefused(Exception):
    """Every reason the new file cannot be applied, one per line."""


class _Domain(Protocol):
    @property
    def cfg(self) -> DomainConfig: ...
    @property
    def running(self) -> bool: ...
    @property
    def disposable(self) -> bool: ...


@dataclass
class ReloadPlan:
    added: list[DomainConfig] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: name -> the new config and the keys that change
    changed: dict[str, tuple[DomainConfig, list[str]]] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        return {"added": [c.name for c in self.added], "removed": self.removed,
                "changed": {n: keys for n, (_, keys) in self.changed.items()}}


def _differences(old: DomainConfig, new: DomainConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(DomainConfig)
            if getattr(old, f.name) != getattr(new, f.name)]


def plan_reload(old: HostConfig, new: HostConfig,
                domains: Mapping[str, _Domain]) -> ReloadPlan:
    """What applying `new` to a host started from `old`, whose domains are now `domains`,
    does; raises `ReloadRefused` with every reason when it may not."""
    why: list[str] = []
    for key in _HOST_FIXED:
        if getattr(old, key) != getattr(new, key):
            why.append(f"[host] {key} changed: it is fixed at `up` (down and up to change it)")
    plan = ReloadPlan()
    for name, d in domains.items():
        if d.disposable:
            if name in new.domains:
                why.append(f"{name}: a disposable of that name exists (kill it first)")
            continue
        c = new.domains.get(name)
        if c is None:
            if d.running:
                why.append(f"{name} is running: cannot remove it (shut it down first)")
            else:
                plan.removed.append(name)
            continue
        keys = _differences(d.cfg, c)
        fixed = [k for k in keys if k in FIXED_WHILE_RUNNING]
        if d.running and fixed:
            why.append(f"{name} is running: {', '.join(fixed)} cannot change under it "
                       f"(shut it down first, or reload once it is halted)")
        elif keys:
            plan.changed[name] = (c, keys)
    plan.added = [c for n, c in new.domains.items() if n not in domains]
    if why:
        raise ReloadRefused("\n".join(why))
    return plan


def policy_problem(policy_dir: str, legacy_dir: str) -> str | None:
    """`FILE:LINE: message` when the policy does not load, as the policy daemon would say."""
    try:
        load_policy(DiskFiles(), [policy_dir], legacy_dir)
    except AccessDenied as err:
        return str(err)
    except OSError as err:
        return f"{err.filename}: {err.strerror}"
    return None
