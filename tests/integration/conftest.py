"""The integration tests' fixtures, each defined here once (the layers are in fixtures/,
see tests/README.md). A module chooses a variant with a marker:

- `@pytest.mark.world(domains={name: domid}, policy_daemon=False)` for `world`;
- `@pytest.mark.host_world(layout=…, sandboxes=[…], up_args=…, display=True)` for
  `host_world` and `fresh_host_world`.

A module that needs more (services, a policy) extends the fixture: a fixture of the same name
that requests it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .fixtures.host import SANDBOX_MODES, HostWorld, default_layout
from .fixtures.policy import (
    PolicyAgent,
    PolicyDaemon,
    close_policy_daemon,
    policy_daemon,
    without_display,
)
from .fixtures.processes import SRC, Domain, QrexecHost, temporary_host
from .fixtures.world import World

# Every program a test starts runs this checkout's sources, also where a test passes no
# environment of its own (`qrexec-host demo`): not whichever pyqrexec pip installed, which
# may be another checkout, or none (a checkout needs no install, see tests/README.md).
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "world(domains, policy_daemon): the `world` fixture's "
                            "domains and policy")
    config.addinivalue_line("markers", "host_world(layout, sandboxes, up_args, display): the "
                            "`host_world` fixture's qrexec-host")


def _marker(node: Any, name: str) -> dict[str, Any]:
    m = node.get_closest_marker(name)
    return dict(m.kwargs) if m is not None else {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A qrexec-host test runs once per sandbox mode of its module's marker (all by default,
    bubblewrap skipped with the reason when it is unusable)."""
    if "host_sandbox" in metafunc.fixturenames:
        modes = _marker(metafunc.definition, "host_world").get("sandboxes", SANDBOX_MODES)
        metafunc.parametrize("host_sandbox", modes, indirect=True, scope="module")


# -- layer 1: processes and sockets ------------------------------------------------------
@pytest.fixture
def host() -> Iterator[QrexecHost]:
    """A temporary QrexecHost, its domains stopped and its directory removed afterwards."""
    with temporary_host() as h:
        yield h


@pytest.fixture
def work(host: QrexecHost) -> Domain:
    """One running domain `work` (domid 5) with its daemon and a root agent."""
    return host.domain("work", 5).start()


# -- layer 2a: dom0's policy side alone --------------------------------------------------
@pytest.fixture
def setup(tmp_path: Path) -> Iterator[PolicyDaemon]:
    """A policy daemon, not started: fake qubesd, fake policy agent, policy directories."""
    s = policy_daemon(tmp_path)
    yield s
    close_policy_daemon(s)


@pytest.fixture
def agent_setup(tmp_path: Path) -> Iterator[PolicyAgent]:
    """The real policy agent on `tmp/agent.sock`, not started, beside a policy daemon (not
    started either) whose policy.Ask and policy.Notify lead to it."""
    daemon = policy_daemon(tmp_path, agent_socket="fake-agent.sock")
    socket = tmp_path / "agent.sock"
    agent = PolicyAgent(daemon, str(socket), env=without_display(daemon.env))
    yield agent
    agent.kill()
    close_policy_daemon(daemon)
    socket.unlink(missing_ok=True)


# -- layer 2: domains calling each other -------------------------------------------------
@pytest.fixture
def world(host: QrexecHost, request: pytest.FixtureRequest) -> World:
    """Running domains (`work` 5 and `anotherVM` 7 unless the `world` marker names others)
    with their own service directories, and a policy program allowing every call; with
    `policy_daemon=True` the real policy side instead (its daemon and agent not started)."""
    kw = _marker(request.node, "world")
    domains: dict[str, int] = kw.pop("domains", {"work": 5, "anotherVM": 7})
    w = World(host, **kw)
    for name, domid in domains.items():
        w.domain(name, domid)
    return w


# -- layer 3: a whole qrexec-host --------------------------------------------------------
@pytest.fixture(scope="module")
def host_sandbox(request: pytest.FixtureRequest) -> str:
    """The sandbox mode of `host_world` (parametrised by pytest_generate_tests)."""
    mode: str = request.param
    return mode


def _host_world(request: pytest.FixtureRequest, host_sandbox: str) -> Iterator[HostWorld]:
    kw = _marker(request.node, "host_world")
    layout: Callable[[Path], str] = kw.get("layout", default_layout)
    w = HostWorld(host_sandbox, layout, display=kw.get("display", True))
    try:
        w.up(*kw.get("up_args", lambda _: [])(w))
        yield w
    finally:
        w.close()


@pytest.fixture(scope="module")
def host_world(request: pytest.FixtureRequest, host_sandbox: str) -> Iterator[HostWorld]:
    """`qrexec-host up` on the module's layout (the `host_world` marker), shared by the
    module's tests: a test leaves it as it found it."""
    yield from _host_world(request, host_sandbox)


@pytest.fixture
def fresh_host_world(request: pytest.FixtureRequest, host_sandbox: str) -> Iterator[HostWorld]:
    """`host_world` for one test alone (the test may change the configuration)."""
    yield from _host_world(request, host_sandbox)
