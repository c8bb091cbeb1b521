"""Paths of the policy engine from options and environment
(docs/reference/cli.md#common-environment)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Sequence

from ..policy.loaders import DEFAULT_POLICY_DIRS
from ..qubesd.client import internal_socket_path
from .engine import EngineConfig
from .paths import legacy_policy_dir, persistent_policy_dir

__all__ = [
    "DEFAULT_SERVICE_PATH",
    "default_policy_dirs",
    "engine_config",
    "legacy_policy_dir",
    "persistent_policy_dir",
    "logger",
]

DEFAULT_SERVICE_PATH = "/run/qubes-rpc:/usr/local/etc/qubes-rpc:/etc/qubes-rpc"


def default_policy_dirs() -> list[str]:
    """Both upstream directories; `$QREXEC_POLICY_DIR` alone where a host keeps its policy
    elsewhere (a qrexec-host's dom0 tools must read the policy its daemons read)."""
    moved = os.environ.get("QREXEC_POLICY_DIR")
    return [moved] if moved else list(DEFAULT_POLICY_DIRS)


def engine_config(policy_dirs: Sequence[str] | None, grants: bool = False) -> EngineConfig:
    """`policy_dirs` replaces the default directories when given (`--path`, `--policy-path`).

    With `grants`, "always" answers are written into the persistent directory:
    `$QREXEC_POLICY_DIR`, else the last of `policy_dirs` (the default's is /etc/qubes/policy.d).
    """
    dirs = list(policy_dirs) if policy_dirs else default_policy_dirs()
    persistent = None
    if grants:
        persistent = os.environ.get("QREXEC_POLICY_DIR") or dirs[-1]
    return EngineConfig(
        policy_dirs=dirs,
        persistent_dir=persistent,
        legacy_dir=legacy_policy_dir(),
        qubesd_internal_socket=internal_socket_path(),
        service_path=os.environ.get("QREXEC_SERVICE_PATH", DEFAULT_SERVICE_PATH).split(":"),
    )


def logger(name: str, syslog: bool = False) -> logging.Logger:
    """Messages as they are, on stderr; with `syslog`, to `/dev/log` when it exists."""
    log = logging.getLogger(name)
    handler: logging.Handler
    if syslog and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter(f"{name}: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log
