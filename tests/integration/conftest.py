"""Fixtures for tests that run the policy programs as real processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from policy_fakes import FakeAgent, FakeQubesd, env, program, wait_for


@dataclass
class DaemonSetup:
    tmp: Path
    etc: Path  # the persistent policy directory
    run: Path  # the runtime policy directory
    legacy: Path
    qubesd: FakeQubesd
    agent: FakeAgent
    env: dict[str, str]
    socket: str = ""
    eval_socket: str = ""
    gui_socket: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def write(self, name: str, text: str, directory: Path | None = None) -> Path:
        path = (directory or self.etc) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def start(self) -> None:
        self.socket = str(self.tmp / "policy.sock")
        self.eval_socket = str(self.tmp / "rpc" / "policy.EvalSimple")
        self.gui_socket = str(self.tmp / "rpc" / "policy.EvalGUI")
        args = program("qrexec_policy_daemon") + [
            f"--policy-path={self.run}",
            f"--policy-path={self.etc}",
            f"--socket-path={self.socket}",
            f"--eval-socket-path={self.eval_socket}",
            f"--gui-socket-path={self.gui_socket}",
        ]
        self.proc = subprocess.Popen(args, env=self.env, stderr=subprocess.PIPE)
        for path in (self.socket, self.eval_socket, self.gui_socket):
            wait_for(path, self.proc)

    def stop(self) -> str:
        """Stop the daemon and return what it logged."""
        assert self.proc is not None
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        self.proc = None
        return err.decode()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[DaemonSetup]:
    (tmp_path / "rpc").mkdir()
    qubesd = FakeQubesd(str(tmp_path / "qubesd.sock"))
    agent = FakeAgent(str(tmp_path / "agent.sock"))
    for service in ("policy.Ask", "policy.Notify"):
        (tmp_path / "rpc" / service).symlink_to(tmp_path / "agent.sock")
    s = DaemonSetup(
        tmp_path,
        tmp_path / "etc",
        tmp_path / "run",
        tmp_path / "legacy",
        qubesd,
        agent,
        env(tmp_path, str(tmp_path / "qubesd.sock")),
    )
    s.etc.mkdir()
    yield s
    if s.proc is not None:
        s.stop()
    qubesd.close()
    agent.close()
