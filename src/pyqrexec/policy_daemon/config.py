"""Paths of the policy engine from options and environment
(docs/reference/cli.md#common-environment)."""

from __future__ import annotations

from collections.abc import Sequence

from ..system.environment import Environment
from .engine import EngineConfig

__all__ = ["engine_config"]


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
