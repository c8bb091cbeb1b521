"""Fixtures for the integration tests: real programs as processes in temporary dirs."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .agent_setup import agent_setup  # noqa: F401  (a fixture)
from .harness import Domain, QrexecHost, cleanup_dir
from .policy_fakes import DaemonSetup, FakePolicyAgent, FakeQubesd, env


@pytest.fixture
def host() -> Iterator[QrexecHost]:
    # short paths: Unix socket names are limited to 107 bytes
    root = Path(tempfile.mkdtemp(prefix="qx", dir="/tmp"))
    h = QrexecHost(root)
    try:
        yield h
    finally:
        h.close()
        cleanup_dir(root)


@pytest.fixture
def work(host: QrexecHost) -> Domain:
    """One running domain `work` (domid 5) with its daemon and a root agent."""
    return host.domain("work", 5).start()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[DaemonSetup]:
    """A policy daemon's world: fake qubesd, fake policy agent, policy directories."""
    (tmp_path / "rpc").mkdir()
    qubesd = FakeQubesd(str(tmp_path / "qubesd.sock"))
    agent = FakePolicyAgent(str(tmp_path / "agent.sock"))
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
