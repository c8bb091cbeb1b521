"""One domain as qrexec-host sees it: its configuration and what runs for it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from .cgroups import DomainCgroup
from .config import DomainConfig

__all__ = ["Domain"]


@dataclass
class Domain:
    cfg: DomainConfig
    #: created by admin.vm.CreateDisposable: removed when killed
    disposable: bool = False
    domid: int | None = None
    state: str = "Halted"
    agent: asyncio.subprocess.Process | None = None
    daemon: asyncio.subprocess.Process | None = None
    #: host pid of the sandbox's PID 1 (bubblewrap mode), for entering it
    ns_pid: int | None = None
    #: first host uid of its user namespace (bubblewrap mode as root), else None
    uid_base: int | None = None
    #: the cgroup (or scope) bounding the agent and all it starts, while it runs
    cgroup: DomainCgroup | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: the tasks that notice its agent or daemon ending on their own
    watchers: list[asyncio.Task[None]] = field(default_factory=list)
    #: pair directories made for it at start in older domains' views, with the peer's domid
    #: (those of domains started later are inside its own view)
    pairs: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def running(self) -> bool:
        return self.domid is not None
