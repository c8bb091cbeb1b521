"""What qrexec-host does for RemoteVMs (docs/remote.md): their tags and power state, and the
`/remote/<local name>` entries a relay domain reads to learn the name each RemoteVM it relays
has on the other host (upstream keeps them in QubesDB; here they are files in the relay's
`/run/qubes/remote/`, see docs/remote.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..qubesd.server import HostError
from ..system.environment import REMOTE_DIR_VARIABLE
from .config import DomainConfig
from .remote_config import relay_tag

__all__ = ["remote_tags", "refuse_power", "write_remote_entries", "REMOTE_DIR_VARIABLE"]

# REMOTE_DIR_VARIABLE names the entries' directory for a plain domain's programs (a sandbox
# sees them at /run/qubes/remote, the default)


def remote_tags(cfg: DomainConfig) -> tuple[str, ...]:
    """The tags the host adds: `relayvm-<relay>` on every RemoteVM."""
    return (relay_tag(cfg.relayvm),) if cfg.relayvm else ()


def refuse_power(cfg: DomainConfig, what: str) -> None:
    """A RemoteVM runs on another host: it is always "Running" here and cannot be started,
    stopped or entered from this one."""
    if cfg.type == "RemoteVM":
        raise HostError("QubesVMError", f"{cfg.name} is a RemoteVM (on another host, through "
                        f"{cfg.relayvm}): it cannot be {what} from here")


def write_remote_entries(run: Path, relay: str, domains: Iterable[DomainConfig]) -> None:
    """`run/remote/<local name>` = the remote name, for every RemoteVM `relay` relays.

    Written by the host into the relay's run directory before its agent starts; the domain
    can read but not change them (the directory is the host's, mode 0755)."""
    entries = [d for d in domains if d.type == "RemoteVM" and d.relayvm == relay]
    if not entries:
        return
    remote = run / "remote"
    remote.mkdir(mode=0o755)
    os.chmod(remote, 0o755)
    for d in entries:
        assert d.remote_name is not None
        path = remote / d.name
        path.write_text(d.remote_name)
        os.chmod(path, 0o644)
