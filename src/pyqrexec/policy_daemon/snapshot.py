"""What the offline policy tools (qrexec-policy-graph, qrexec-legacy-convert) work on.

One system-info snapshot, from a file or from qubesd, and the policy of a single directory
read from disk with the legacy directory of the environment.
"""

from __future__ import annotations

from ..policy.errors import SystemInfoError
from ..policy.graph import GraphOptions, render
from ..policy.loaders import DiskFiles, load_policy
from ..policy.parser import Policy
from ..policy.system_info import SystemInfo
from ..qubesd.client import QubesdError, call
from ..system.environment import Environment

__all__ = ["system_info_from_file", "system_info_from_qubesd", "load_dir", "graph_lines"]


def system_info_from_file(path: str) -> SystemInfo:
    """Raises `SystemInfoError` when the file cannot be read or is not system info."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise SystemInfoError(f"cannot read {path}: {err.strerror}") from err
    return SystemInfo.from_json(data)


def system_info_from_qubesd(env: Environment) -> SystemInfo:
    """qubesd's `internal.GetSystemInfo`; raises `SystemInfoError`."""
    try:
        data = call("internal.GetSystemInfo", "dom0", path=env.qubesd_internal_socket)
    except QubesdError as err:
        raise SystemInfoError(str(err)) from err
    return SystemInfo.from_json(data)


def load_dir(policy_dir: str, env: Environment, *, compat: bool = True) -> Policy:
    """The policy of `policy_dir` alone (with `env`'s legacy directory); raises
    `AccessDenied` when it does not load."""
    return load_policy(DiskFiles(), [policy_dir], env.legacy_policy_dir, compat=compat).policy


def graph_lines(policy_dir: str, env: Environment, info: SystemInfo,
                options: GraphOptions) -> list[str]:
    return render(load_dir(policy_dir, env), info, options)
