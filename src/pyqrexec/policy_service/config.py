"""Paths of the policy engine from options and environment (cli.md "Common environment")."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from ..host.qubesd import internal_socket_path
from ..policy.loaders import DEFAULT_LEGACY_DIR, DEFAULT_POLICY_DIRS
from .engine import EngineConfig

__all__ = ["DEFAULT_SERVICE_PATH", "engine_config", "stderr_logger"]

DEFAULT_SERVICE_PATH = "/run/qubes-rpc:/usr/local/etc/qubes-rpc:/etc/qubes-rpc"


def engine_config(policy_dirs: Sequence[str] | None) -> EngineConfig:
    """`policy_dirs` replaces both default directories when given (`--path`, `--policy-path`)."""
    return EngineConfig(
        policy_dirs=list(policy_dirs) if policy_dirs else list(DEFAULT_POLICY_DIRS),
        legacy_dir=os.environ.get("QREXEC_LEGACY_POLICY_DIR", DEFAULT_LEGACY_DIR),
        qubesd_internal_socket=internal_socket_path(),
        service_path=os.environ.get("QREXEC_SERVICE_PATH", DEFAULT_SERVICE_PATH).split(":"),
    )


def stderr_logger(name: str) -> logging.Logger:
    log = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log
