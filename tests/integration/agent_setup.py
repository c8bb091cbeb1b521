"""The real qrexec-policy-agent as a process beside a real qrexec-policy-daemon."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .policy_fakes import DaemonSetup, FakeAgent, FakeQubesd, env, program, wait_for


@dataclass
class AgentSetup:
    daemon: DaemonSetup
    socket: str
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, *args: str, **popen: object) -> subprocess.Popen[bytes]:
        """Start the agent on `socket` with `args`; standard input is empty unless given."""
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("stderr", subprocess.PIPE)
        argv = program("qrexec_policy_agent") + ["-s", self.socket, *args]
        self.proc = subprocess.Popen(argv, env=self.env, **popen)  # type: ignore[call-overload]
        wait_for(self.socket, self.proc)
        return self.proc

    def stop(self) -> str:
        """Stop the agent and return what it logged."""
        assert self.proc is not None
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        self.proc = None
        return err.decode() if err else ""


@pytest.fixture
def agent_setup(tmp_path: Path) -> Iterator[AgentSetup]:
    """A policy daemon's world whose policy.Ask and policy.Notify lead to the real agent."""
    (tmp_path / "rpc").mkdir()
    qubesd = FakeQubesd(str(tmp_path / "qubesd.sock"))
    unused = FakeAgent(str(tmp_path / "fake-agent.sock"))  # DaemonSetup wants one; never called
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
