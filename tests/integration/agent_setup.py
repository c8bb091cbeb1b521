"""The real qrexec-policy-agent as a process beside a real qrexec-policy-daemon."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .harness import wait_for
from .policy_fakes import DaemonSetup, FakePolicyAgent, FakeQubesd, env, program, wait_for_socket


@dataclass
class AgentSetup:
    daemon: DaemonSetup
    socket: str
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, *args: str, **popen: object) -> subprocess.Popen[bytes]:
        """Start the agent on `socket` with `args`; standard input is empty unless given.
        What it logs goes to a file that `logged` and `wait_logged` read while it runs."""
        popen.setdefault("stdin", subprocess.DEVNULL)
        with open(self.log_path, "wb") as log:
            popen.setdefault("stderr", log)
            argv = program("qrexec_policy_agent") + ["-s", self.socket, *args]
            self.proc = subprocess.Popen(argv, env=self.env, **popen)  # type: ignore[call-overload]
        wait_for_socket(self.socket, self.proc)
        return self.proc

    @property
    def log_path(self) -> Path:
        return Path(self.socket).with_suffix(".log")

    def logged(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_logged(self, *lines: str, timeout: float = 10.0) -> None:
        """Until the agent has logged every one of `lines` (they may come in any order)."""
        wait_for(lambda: all(line in self.logged() for line in lines), timeout,
                 f"the agent to log {lines}")

    def stop(self) -> str:
        """Stop the agent and return what it logged."""
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None
        return self.logged()


@pytest.fixture
def agent_setup(tmp_path: Path) -> Iterator[AgentSetup]:
    """A policy daemon's world whose policy.Ask and policy.Notify lead to the real agent."""
    (tmp_path / "rpc").mkdir()
    qubesd = FakeQubesd(str(tmp_path / "qubesd.sock"))
    # DaemonSetup wants one; never called
    unused = FakePolicyAgent(str(tmp_path / "fake-agent.sock"))
    socket = str(tmp_path / "agent.sock")
    for service in ("policy.Ask", "policy.Notify"):
        (tmp_path / "rpc" / service).symlink_to(socket)
    daemon = DaemonSetup(
        tmp_path,
        tmp_path / "etc",
        tmp_path / "run",
        tmp_path / "legacy",
        qubesd,
        unused,
        env(tmp_path, str(tmp_path / "qubesd.sock")),
    )
    daemon.etc.mkdir()
    agent_env = dict(daemon.env)
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        agent_env.pop(name, None)
    setup = AgentSetup(daemon, socket, env=agent_env)
    yield setup
    if setup.proc is not None:
        setup.proc.kill()
        setup.proc.wait()
    if daemon.proc is not None:
        daemon.stop()
    qubesd.close()
    unused.close()
    if os.path.exists(socket):
        os.unlink(socket)
