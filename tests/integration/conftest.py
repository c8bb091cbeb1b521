"""Fixtures for tests that run the policy programs as real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from policy_fakes import DaemonSetup, FakeAgent, FakeQubesd, env


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
