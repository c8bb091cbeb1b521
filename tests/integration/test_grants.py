"""Remembered answers (grants) in the real qrexec-policy-daemon (docs/audit.md "Grants")."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from .fixtures.fakes import query
from .fixtures.policy import PolicyDaemon
from .fixtures.processes import program
from .test_audit import audit_file, records
from .test_policy_daemon import W1, req

ASK = "test.Svc * work @anyvm ask default_target=vault\n"


def asks(setup: PolicyDaemon) -> int:
    return len(setup.agent.received(b"policy.Ask"))


def answering(setup: PolicyDaemon, reply: bytes) -> None:
    setup.agent.answer = lambda _: reply


def events(setup: PolicyDaemon, event: str) -> list[dict[str, Any]]:
    return [r for r in records(audit_file(setup)) if r["event"] == event]


def wait_for_record(setup: PolicyDaemon, event: str, timeout: float = 20) -> dict[str, Any]:
    """The first `event` record, once the daemon wrote it (polling its file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if audit_file(setup).exists() and (found := events(setup, event)):
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no {event} record")


def tool(setup: PolicyDaemon, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(program(module) + list(args), env=setup.env, capture_output=True,
                          text=True, timeout=60)


def test_ask_offers_remembering_and_upstream_replies_still_work(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", ASK)
    setup.start()
    answering(setup, b"allow:vault")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    [(_, payload)] = setup.agent.received(b"policy.Ask")
    assert json.loads(payload)["remember"] == ["for", "halt", "always"]
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    assert asks(setup) == 2  # once means once
    # a malformed suffix makes the reply invalid, as any other unknown reply
    answering(setup, b"allow:vault for=99999999")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    answering(setup, b"deny always")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    assert asks(setup) == 4


def test_allow_for_one_second_then_asks_again(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", ASK)
    setup.start()
    answering(setup, b"allow:vault for=1")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    answering(setup, b"deny")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    assert asks(setup) == 1
    created = events(setup, "grant-created")[0]
    used = events(setup, "decision")[1]
    assert used["grant"] == created["grant"] and used["asked"] is False
    assert used["rule"].endswith("30-user.policy:1")
    # a different argument is a different request: asked
    assert query(setup.socket, req("work", "vault", "test.Svc+other")) == b"result=deny"
    assert asks(setup) == 2
    expired = wait_for_record(setup, "grant-expired")
    assert expired["grant"] == created["grant"]
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    assert asks(setup) == 3


def test_a_grant_never_passes_a_deny_rule_above_its_ask_rule(setup: PolicyDaemon) -> None:
    ask = setup.write("30-user.policy", ASK)
    setup.start()
    answering(setup, b"allow:vault for=300")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    answering(setup, b"allow:vault")  # would allow, if it were asked
    setup.write("20-deny.policy", "test.Svc * work vault deny\n")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    assert asks(setup) == 1
    denied = events(setup, "decision")[-1]
    assert denied["grant"] is None and denied["rule"].endswith("20-deny.policy:1")
    # an edited ask rule is another rule: its grants do not carry over
    (setup.etc / "20-deny.policy").unlink()
    ask.write_text("test.Svc * work @anyvm ask default_target=personal\n")
    answering(setup, b"deny")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    assert asks(setup) == 2


def test_deny_for_a_time(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", ASK)
    setup.start()
    answering(setup, b"deny for=300")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    answering(setup, b"allow:vault")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    assert asks(setup) == 1
    assert events(setup, "decision")[1]["answer"] == "deny"


def test_always_writes_a_lint_clean_rule(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", ASK)
    setup.start()
    answering(setup, b"allow:vault always")
    assert query(setup.socket, req("work", "vault", "test.Svc+a")) == W1
    # the hostile argument's words would split a rule's columns: allowed once, never written
    hostile = "test.Svc+x * @anyvm @anyvm allow #"
    assert query(setup.socket, req("work", "vault", hostile)) == W1
    grants = setup.etc / "25-user-grants.policy"
    text = grants.read_text()
    assert "@anyvm" not in text
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == ["test.Svc\t+a\twork\tvault\tallow"]
    assert "answered by the user of dom0" in text
    lint = tool(setup, "qubes_policy_lint", str(grants))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    answering(setup, b"deny")
    assert query(setup.socket, req("work", "vault", "test.Svc+a")) == W1
    assert asks(setup) == 2
    decided = events(setup, "decision")[-1]
    assert decided["rule"].endswith("25-user-grants.policy:4") and decided["asked"] is False
    created = events(setup, "grant-created")
    assert [c["kind"] for c in created] == ["always"]
    log = setup.stop()
    assert "cannot write the rule for an 'always' answer" in log


def test_list_revoke_and_explain(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", ASK)
    setup.start()
    answering(setup, b"allow:vault for=300")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    listed = tool(setup, "qubes_policy", "--grants")
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    grant_id = events(setup, "grant-created")[0]["grant"]
    assert line.startswith(f"grant {grant_id}: allow:vault for work -> vault test.Svc+, until ")
    explain = tool(setup, "qrexec_policy_exec", "--explain", "--path", str(setup.run),
                   "--path", str(setup.etc), "work", "vault", "test.Svc")
    assert "decision: allow (remembered)" in explain.stdout
    assert f"decided by: grant {grant_id}:" in explain.stdout
    assert tool(setup, "qubes_policy", "--revoke", "nosuch").returncode == 1
    revoked = tool(setup, "qubes_policy", "--revoke", grant_id)
    assert revoked.returncode == 0, revoked.stderr
    assert events(setup, "grant-revoked")[0]["grant"] == grant_id
    assert tool(setup, "qubes_policy", "--grants").stdout == ""
    answering(setup, b"deny")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    assert asks(setup) == 2
    explain = tool(setup, "qrexec_policy_exec", "--explain", "--path", str(setup.run),
                   "--path", str(setup.etc), "work", "vault", "test.Svc")
    assert "decision: ask" in explain.stdout


def test_restarted_daemon_keeps_grants_until_expiry(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", ASK)
    setup.start()
    answering(setup, b"allow:vault for=300")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    answering(setup, b"allow:personal for=2")
    assert query(setup.socket, req("work", "personal", "test.Svc")).startswith(
        b"user=DEFAULT\nresult=allow\ntarget=personal\n")
    short = events(setup, "grant-created")[1]
    setup.stop()
    for path in (setup.socket, setup.eval_socket, setup.gui_socket):
        os.unlink(path)  # so that start() waits for the new daemon's sockets
    setup.start()
    answering(setup, b"deny")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    assert asks(setup) == 2
    # the 2-second grant ends at its time even though the daemon restarted meanwhile
    assert wait_for_record(setup, "grant-expired")["grant"] == short["grant"]
    assert query(setup.socket, req("work", "personal", "test.Svc")) == b"result=deny"
    assert asks(setup) == 3


def test_until_halt(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", ASK)
    setup.start()
    answering(setup, b"allow:vault until=halt")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    assert asks(setup) == 1
    assert events(setup, "grant-created")[0]["halts"] == ["work", "vault"]
    info = json.loads(setup.qubesd.system_info)
    # vault was halted when asked: the call was to start it; running, then halted, ends it
    for state in ("Running", "Halted"):
        info["domains"]["vault"]["power_state"] = state
        setup.qubesd.system_info = json.dumps(info).encode()
        if state == "Running":
            assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
            assert asks(setup) == 1
    answering(setup, b"deny")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    assert asks(setup) == 2
    assert events(setup, "grant-expired")[0]["reason"] == "vault halted"
