"""Paths of the policy engine from options and environment
(docs/reference/cli.md#common-environment), and the policy programs' logger."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Sequence

from ..system.environment import Environment
from .engine import EngineConfig

__all__ = ["engine_config", "logger"]


def engine_config(env: Environment, policy_dirs: Sequence[str] | None,
                  grants: bool = False) -> EngineConfig:
    """`policy_dirs` replaces `env`'s policy directories when given (`--path`,
    `--policy-path`).

    With `grants`, "always" answers are written into the persistent directory:
    `$QREXEC_POLICY_DIR`, else the last of `policy_dirs` (the default's is /etc/qubes/policy.d).
    """
    dirs = list(policy_dirs) if policy_dirs else env.policy_dirs
    persistent = None
    if grants:
        persistent = env.policy_dir or dirs[-1]
    return EngineConfig(
        policy_dirs=dirs,
        persistent_dir=persistent,
        legacy_dir=env.legacy_policy_dir,
        qubesd_internal_socket=env.qubesd_internal_socket,
        service_path=list(env.service_path),
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
