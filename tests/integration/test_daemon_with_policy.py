"""qrexec-daemon asks the real qrexec-policy-daemon, and falls back to the real
qrexec-policy-exec when the policy socket is absent (issue: policy engine acceptance)."""

from __future__ import annotations

import pytest

from .fixtures.processes import wait_for
from .fixtures.world import World

POLICY = "test.Echo * work vault allow\ntest.Echo * @anyvm @anyvm deny\n"

pytestmark = pytest.mark.world(domains={"work": 5, "vault": 7}, policy_daemon=True)


@pytest.fixture
def world(world: World) -> World:
    """The conftest's world with the real policy side (daemon not started), the policy and
    the services."""
    world.policy({"30-user": POLICY})
    world.service("vault", "test.Echo",
                  '#!/bin/sh\necho "echo from vault for $QREXEC_REMOTE_DOMAIN"\n')
    world.service("personal", "test.Echo", "#!/bin/sh\necho wrong\n")
    return world


def test_policy_daemon_decides(world: World) -> None:
    world.start_policy_daemon()
    try:
        r = world.call("work", "vault", "test.Echo")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"echo from vault for work\n"
        r = world.call("work", "personal", "test.Echo")
        assert r.returncode == 126
        log = world.log()
        assert "test.Echo+: work -> vault: allowed to vault" in log
    finally:
        world.stop_policy_daemon()


def test_fallback_to_policy_exec_without_socket(world: World) -> None:
    assert not (world.host.root / "policy.sock").exists()
    r = world.call("work", "vault", "test.Echo")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"echo from vault for work\n"
    r = world.call("work", "personal", "test.Echo")
    assert r.returncode == 126


def test_worker_reports_the_end_under_the_decisions_call_id(world: World) -> None:
    """docs/audit.md "Calls' ends": the real qrexec-daemon's worker names the call in its
    policy connection and reports its end on the audit socket."""
    import json

    world.start_policy_daemon()
    trail = world.host.root / "log" / "qrexec-audit.jsonl"
    try:
        r = world.call("work", "vault", "test.Echo")
        assert r.returncode == 0, r.stderr

        def records() -> list[dict[str, object]]:
            return [json.loads(line) for line in trail.read_text().splitlines()]

        wait_for(lambda: len(records()) == 2, 20, "the end record")
        decision, end = records()
        assert decision["event"] == "decision" and decision["decision"] == "allow"
        assert end["event"] == "end" and end["call"] == decision["call"]
        assert (end["source"], end["target"], end["scope"], end["status"]) == (
            "work", "vault", "connect", 0)
        assert isinstance(end["duration_ms"], int)
    finally:
        world.stop_policy_daemon()
