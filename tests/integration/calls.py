"""A small world for VM -> VM tests: domains with their own service dirs and a policy program."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from .harness import Domain, QrexecHost, program

#: agent wrapper for a non-root agent (the daemon's default user must then be `nobody`)
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

ALLOW_ALL = """#!/bin/sh
# test policy program: allow everything to the intended target (policy.md §8 answer lines)
[ "$1" = "--" ] && shift
target="$2"
case "$target" in ''|@default) target=anotherVM ;; esac
allow() {
  printf 'user=DEFAULT\\nresult=allow\\ntarget=%s\\nautostart=False\\n' "$1"
  printf 'requested_target=%s\\n' "$2"
}
case "$target" in
  dom0|@adminvm) allow dom0 "$target" ;;
  deny*) echo result=deny; exit 1 ;;
  *) allow "$target" "$2" ;;
esac
"""


def write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


class World:
    """Domains whose agents see `<root>/<name>/rpc` as QREXEC_SERVICE_PATH."""

    def __init__(self, host: QrexecHost, policy: str = ALLOW_ALL) -> None:
        self.host = host
        self.policy = write_exe(host.root / "policy-program", policy)

    def rpc_dir(self, name: str) -> Path:
        d = self.host.root / name / "rpc"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def service(self, vm: str, name: str, text: str) -> Path:
        return write_exe(self.rpc_dir(vm) / name, text)

    def domain(self, name: str, domid: int, *, start: bool = True,
               agent_env: dict[str, str] | None = None, user: str = "root",
               agent_wrapper: list[str] | None = None) -> Domain:
        """A running domain; `user` is its daemon's default user, `agent_wrapper` prefixes
        the agent's argv (e.g. NOBODY for a non-root agent)."""
        dom = self.host.domain(name, domid, user)
        dom.agent_env = {
            "QREXEC_SERVICE_PATH": str(self.rpc_dir(name)),
            "QUBES_RPC_CONFIG_PATH": str(self.host.root / name / "rpc-config"),
            **(agent_env or {}),
        }
        dom.daemon_env = {
            "QREXEC_POLICY_SOCKET": str(self.host.root / "no-policy.sock"),
            "QREXEC_SERVICE_PATH": str(self.rpc_dir("dom0")),
        }
        if start:
            self.start(dom, agent_wrapper)
        return dom

    def start(self, dom: Domain, agent_wrapper: list[str] | None = None) -> None:
        dom.start_agent(wrapper=agent_wrapper)
        dom.start_daemon(extra=[f"--policy-program={self.policy}"])

    def call_env(self, source: str, env: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process in `source` (its agent's vchan directory)."""
        dom = self.host.domains[source]
        vchan_dir = {k: v for k, v in dom.agent_env.items() if k == "VCHAN_SOCKET_DIR"}
        return self.host.env(dom.domid, **vchan_dir, **(env or {}))

    def call_argv(self, source: str, *args: str) -> list[str]:
        dom = self.host.domains[source]
        return [*program("qrexec-client-vm"), "-a", dom.agent_socket, *args]

    def call(self, source: str, *args: str, input: bytes | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """qrexec-client-vm inside `source`."""
        return subprocess.run(self.call_argv(source, *args), input=input, capture_output=True,
                              timeout=timeout, env=self.call_env(source, env))

    def start_call(self, source: str, *args: str, env: dict[str, str] | None = None,
                   **kw: Any) -> subprocess.Popen[bytes]:
        """qrexec-client-vm inside `source`, running on."""
        return subprocess.Popen(self.call_argv(source, *args), env=self.call_env(source, env),
                                **kw)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
