"""Evaluation details beyond the worked examples (docs/reference/policy.md#evaluation,
docs/reference/policy.md#answer-lines)."""

from __future__ import annotations

import json

from pyqrexec.policy.system_info import SystemInfo

from .policy_helpers import FIXTURE, Run, answer, logs, make_run


def test_invalid_requested_target_tokens(run: Run) -> None:
    for target, message in [
        ("@anyvm", "invalid intendedtarget token: '@anyvm'"),
        ("*", "invalid intendedtarget token: '*'"),
        ("@dispvm:", "invalid empty @dispvm: token: '@dispvm:'"),
        ("@tag:work", "invalid intendedtarget token: '@tag:work'"),
    ]:
        _, out = run("test.Svc * @anyvm * allow", "work", target, "test.Svc")
        assert answer(out) == "result=deny" and out.notifications == []
        assert logs(out) == [
            f"qrexec: test.Svc: work -> {target}: error loading policy: <unknown>:0: {message}"
        ]


def test_requested_source_checks(run: Run) -> None:
    policy = "test.Svc * @anyvm @anyvm allow"
    for source, requested, reason in [
        ("relay", "nosuch", "unknown requested source qube 'nosuch'"),
        ("relay", "work", "work: requested source is only authorized for RemoteVM"),
        ("work", "remote1", "work is not a relay for remote1"),
    ]:
        _, out = run(policy, source, "vault", "test.Svc", requested_source=requested)
        assert out.reason == reason and len(out.notifications) == 1


def test_dispvm_template_rule_without_default_dispvm(run: Run) -> None:
    policy = "test.Svc * @anyvm @dispvm:default-dvm allow\ntest.Svc * @anyvm @anyvm allow"
    _, out = run(policy, "vault", "@dispvm", "test.Svc")
    assert answer(out) == "result=deny" and out.notifications == []
    tag_policy = "test.Svc * @anyvm @dispvm:@tag:work allow\ntest.Svc * vault @dispvm deny"
    _, out = run(tag_policy, "vault", "@dispvm", "test.Svc")
    assert out.reason.startswith("denied by policy") and out.rule is not None
    assert out.rule.line == 2


def test_allow_notification_uses_effective_source(run: Run) -> None:
    _, out = run("test.Svc * work vault allow notify=yes", "work", "vault", "test.Svc+a")
    [note] = out.notifications
    assert (note.resolution, note.source, note.target, note.argument) == (
        "allow", "work", "vault", "+a",
    )  # fmt: skip
    assert note.to_json() == (
        b'{"resolution": "allow", "service": "test.Svc", "argument": "+a", '
        b'"source": "work", "target": "vault"}'
    )


def test_ask_replies(run: Run) -> None:
    policy = "test.Svc * work @anyvm ask notify=yes"
    evaluation, out = run(policy, "work", "vault", "test.Svc")
    done = evaluation.resolve_ask("maybe")
    assert done.reason == "invalid response" and len(done.notifications) == 1
    assert logs(done)[0] == "invalid ask response for test.Svc: maybe"
    evaluation, _ = run(policy, "work", "vault", "test.Svc")
    done = evaluation.resolve_ask("deny")
    assert done.reason.startswith("denied by the user") and len(done.notifications) == 1
    evaluation, _ = run(policy, "work", "vault", "test.Svc")
    done = evaluation.ask_failed("agent unreachable")
    assert answer(done) == "result=deny"
    evaluation, _ = run(policy, "work", "vault", "test.Svc")
    done = evaluation.resolve_ask("allow:@dispvm:default-dvm")
    assert "target=@dispvm:default-dvm" in done.lines
    assert [n.resolution for n in done.notifications] == ["allow"]


def test_ask_target_naming_a_missing_qube(run: Run) -> None:
    evaluation, out = run("test.Svc * work @anyvm ask target=ghost", "work", "vault", "test.Svc")
    assert out.ask is not None and out.ask.targets == ("ghost",)
    done = evaluation.resolve_ask("allow:ghost")
    assert answer(done) == "result=deny" and done.notifications == []


def test_ask_dom0_forms_and_uuid_default(run: Run) -> None:
    policy = "test.Svc * work @adminvm ask default_target=uuid:00000000-0000-0000-0000-000000000000"
    _, out = run(policy, "work", "@adminvm", "test.Svc")
    assert out.ask is not None and out.ask.targets == ("dom0",)
    assert out.ask.default_target == "dom0"
    evaluation, _ = run(policy, "work", "@adminvm", "test.Svc")
    assert evaluation.resolve_ask("allow:dom0").lines[2] == "target=dom0"


def test_remote_vm_without_relay() -> None:
    doc = json.loads(FIXTURE.read_bytes())
    doc["domains"]["remote1"]["relayvm"] = None
    run = make_run(SystemInfo.from_json(json.dumps(doc)))
    _, out = run("test.Svc * work remote1 allow", "work", "remote1", "test.Svc")
    assert out.reason == "remote1: relayvm is not set" and len(out.notifications) == 1
    assert logs(out)[0] == "qrexec: test.Svc+: work -> remote1: allowed to remote1"


def test_source_may_be_dom0(run: Run) -> None:
    _, out = run("test.Svc * dom0 @anyvm allow", "dom0", "vault", "test.Svc")
    assert out.allowed
    for target in ("dom0", "@adminvm", "uuid:00000000-0000-0000-0000-000000000000"):
        _, out = run("test.Svc * dom0 * allow", "dom0", target, "test.Svc")
        assert out.reason == "loopback qrexec connection not supported", target


def test_system_info_failure() -> None:
    from pyqrexec.policy.evaluation import Evaluation, Request

    out = Evaluation.system_info_failed(Request("work", "vault", "test.Svc"), "boom")
    assert answer(out) == "result=deny" and out.notifications == []
    assert logs(out) == ["qrexec: test.Svc: work -> vault: error getting system info: boom"]
