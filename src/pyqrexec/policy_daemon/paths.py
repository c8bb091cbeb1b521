"""Where the policy files are, from the environment (docs/reference/cli.md#common-environment).

Light on purpose: dom0 services (the Admin API, policy.RegisterArgument) start with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..policy.loaders import DEFAULT_LEGACY_DIR, DEFAULT_POLICY_DIRS

__all__ = ["persistent_policy_dir", "legacy_policy_dir"]


def persistent_policy_dir(env: Mapping[str, str] | None = None) -> str:
    """`/etc/qubes/policy.d`, or `$QREXEC_POLICY_DIR` (ext) on a host that keeps it elsewhere."""
    return (os.environ if env is None else env).get("QREXEC_POLICY_DIR") or DEFAULT_POLICY_DIRS[-1]


def legacy_policy_dir(env: Mapping[str, str] | None = None) -> str:
    """`/etc/qubes-rpc/policy`, or `$QREXEC_LEGACY_POLICY_DIR` (ext)."""
    return (os.environ if env is None else env).get("QREXEC_LEGACY_POLICY_DIR", DEFAULT_LEGACY_DIR)
