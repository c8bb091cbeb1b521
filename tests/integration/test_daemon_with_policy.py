"""qrexec-daemon asks the real qrexec-policy-daemon, and falls back to the real
qrexec-policy-exec when the policy socket is absent."""

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
        # between two VMs the data never passes through dom0: nothing to count
        assert end["bytes_in"] is None and end["bytes_out"] is None
    finally:
        world.stop_policy_daemon()


def test_end_of_a_call_to_dom0_counts_the_bytes_each_way(world: World) -> None:
    """docs/audit.md "Calls' ends": dom0 relays a VM -> dom0 call, and its end record says
    how many bytes passed each way, as counted by that relay."""
    import json

    sent, returned = 300_001, 123_457  # more than one data message each way
    world.policy({"30-user": "test.Count * work dom0 allow\n" + POLICY})
    world.service("dom0", "test.Count",
                  f"#!/bin/sh\ncat >/dev/null\nhead -c {returned} /dev/zero | tr '\\0' x\n")
    world.start_policy_daemon()
    trail = world.host.root / "log" / "qrexec-audit.jsonl"
    try:
        r = world.call("work", "dom0", "test.Count", input=b"y" * sent)
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"x" * returned

        def records() -> list[dict[str, object]]:
            return [json.loads(line) for line in trail.read_text().splitlines()]

        wait_for(lambda: len(records()) == 2, 20, "the end record")
        decision, end = records()
        assert decision["decision"] == "allow" and end["call"] == decision["call"]
        assert (end["target"], end["scope"], end["status"]) == ("dom0", "call", 0)
        assert (end["bytes_in"], end["bytes_out"]) == (sent, returned)
        # a call with no data at all: zero each way, not null
        r = world.call("work", "dom0", "test.Count", input=b"")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: len(records()) == 4, 20, "the second end record")
        assert (records()[3]["bytes_in"], records()[3]["bytes_out"]) == (0, returned)
    finally:
        world.stop_policy_daemon()


def test_every_real_call_has_one_decision_and_one_end(world: World) -> None:
    """Through the real daemons, agents and policy daemon: 300 calls (VM -> VM and VM -> dom0,
    four at a time) give exactly 300 decision and 300 end records, every one with all its
    fields, joined by id. Every tenth call is made by qrexec-client-vm, the others by the client
    library, whose bytes are the same (no interpreter start per call: the count is the point)."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from pyqrexec.policy.audit import DECISION_FIELDS, END_FIELDS

    world.policy({"30-user": "test.Count * work dom0 allow\n" + POLICY})
    world.service("dom0", "test.Count", "#!/bin/sh\ncat >/dev/null\nprintf 1234567\n")
    world.start_policy_daemon()
    trail = world.host.root / "log" / "qrexec-audit.jsonl"
    n = 300

    def one(i: int) -> tuple[str, str]:
        target, service = ("vault", "test.Echo") if i % 2 else ("dom0", "test.Count")
        if i % 10 == 0:
            r = world.call("work", target, f"{service}+n{i}", input=b"z" * i)
            assert r.returncode == 0, r.stderr
        else:
            with world.library("work") as qrexec:
                done = qrexec.call(target, f"{service}+n{i}", input=b"z" * i, timeout=60)
            assert done.returncode == 0, done.stderr
        return target, f"+n{i}"

    try:
        with ThreadPoolExecutor(4) as pool:
            made = sorted(pool.map(one, range(n)))

        def records() -> list[dict[str, object]]:
            return [json.loads(line) for line in trail.read_bytes().splitlines()]

        wait_for(lambda: len(records()) >= 2 * n, 60, "every end record")
        found = records()
        assert len(found) == 2 * n
        decisions = {r["call"]: r for r in found if r["event"] == "decision"}
        ends = {r["call"]: r for r in found if r["event"] == "end"}
        assert len(decisions) == len(ends) == n and decisions.keys() == ends.keys()
        assert sorted((str(r["target"]), str(r["argument"])) for r in decisions.values()) == made
        for call, decision in decisions.items():
            end = ends[call]
            assert tuple(decision) == DECISION_FIELDS and tuple(end) == END_FIELDS
            assert decision["decision"] == "allow" and end["status"] == 0
            assert (end["target"], end["argument"]) == (decision["target"], decision["argument"])
            i = int(str(decision["argument"])[2:])
            if decision["target"] == "dom0":
                assert (end["scope"], end["bytes_in"], end["bytes_out"]) == ("call", i, 7)
            else:
                assert (end["scope"], end["bytes_in"], end["bytes_out"]) == (
                    "connect", None, None)
    finally:
        world.stop_policy_daemon()
