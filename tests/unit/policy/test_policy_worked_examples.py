"""Worked examples W1–W42: a policy, a request against the system-information fixture and the
answer expected, evaluated in memory."""

from __future__ import annotations

from .policy_helpers import COMPAT, LEGACY, USER, Run, answer, logs

U = {c: "-".join(c * n for n in (8, 4, 4, 4, 12)) for c in "0123456789a"}
W1 = (
    f"user=DEFAULT / result=allow / target=vault / target_uuid=uuid:{U['3']} / "
    "autostart=True / requested_target=vault"
)
W15 = (
    f"user=DEFAULT / result=allow / target=@dispvm:default-dvm / "
    f"target_uuid=@dispvm:uuid:{U['4']} / autostart=True / requested_target=@dispvm"
)
W26 = "test.Svc * work sys-usb deny\ntest.Svc * work @anyvm ask default_target=vault\n"
W26_TARGETS = (
    "@dispvm:anon-dvm", "@dispvm:default-dvm", "anon-dvm", "default-dvm", "fedora",
    "personal", "relay", "remote1", "vault",
)  # fmt: skip


def test_w01_allow(run: Run) -> None:
    _, out = run("test.Svc * work vault allow", "work", "vault", "test.Svc")
    assert out.allowed and answer(out) == W1
    assert logs(out) == ["qrexec: test.Svc+: work -> vault: allowed to vault"]
    assert out.notifications == []


def test_w02_no_matching_rule(run: Run) -> None:
    _, out = run("test.Svc * work vault allow", "personal", "vault", "test.Svc")
    assert answer(out) == "result=deny"
    assert logs(out) == ["qrexec: test.Svc: personal -> vault: denied: no matching rule found"]
    [note] = out.notifications
    assert note.guivm == "dom0"
    assert note.to_json() == (
        b'{"resolution": "deny", "service": "test.Svc", "argument": "+", '
        b'"source": "personal", "target": "vault"}'
    )


def test_w03_deny_notify_no(run: Run) -> None:
    _, out = run("test.Svc * @anyvm @anyvm deny notify=no", "work", "vault", "test.Svc")
    assert answer(out) == "result=deny"
    assert logs(out) == [
        "qrexec: test.Svc: work -> vault: denied: denied by policy "
        "/etc/qubes/policy.d/30-user.policy:1"
    ]
    assert out.notifications == []


def test_w04_first_match_in_file_order(run: Run) -> None:
    files = {
        "/etc/qubes/policy.d/90-b.policy": "test.Svc * work vault allow",
        "/etc/qubes/policy.d/10-a.policy": "test.Svc * work vault deny",
    }
    _, out = run(files, "work", "vault", "test.Svc")
    assert answer(out) == "result=deny"
    assert out.rule is not None and out.rule.file.endswith("10-a.policy")


W5 = "test.File +f1 work vault allow\ntest.File +f2 personal vault allow\n" + (
    "test.File * @anyvm @anyvm deny\n"
)


def test_w05_argument_rule(run: Run) -> None:
    _, out = run(W5, "work", "vault", "test.File+f1")
    assert answer(out) == W1


def test_w06_w07_fall_to_catch_all(run: Run) -> None:
    for source, service in (("personal", "test.File+f1"), ("work", "test.File")):
        _, out = run(W5, source, "vault", service)
        assert answer(out) == "result=deny"
        assert out.rule is not None and out.rule.line == 3


def test_w08_empty_argument(run: Run) -> None:
    _, out = run("test.Svc + work vault allow", "work", "vault", "test.Svc+")
    assert out.allowed
    _, out = run("test.Svc + work vault allow", "work", "vault", "test.Svc+x")
    assert answer(out) == "result=deny" and out.reason == "no matching rule found"


def test_w09_anyvm_excludes_dom0(run: Run) -> None:
    _, out = run("test.Svc * work @anyvm allow", "work", "dom0", "test.Svc")
    assert answer(out) == "result=deny"


def test_w10_star_includes_dom0(run: Run) -> None:
    _, out = run("test.Svc * work * allow", "work", "dom0", "test.Svc")
    assert answer(out) == (
        "user=DEFAULT / result=allow / target=dom0 / autostart=True / requested_target=dom0"
    )


def test_w11_adminvm_keyword(run: Run) -> None:
    _, out = run("test.Svc * work @adminvm allow", "work", "@adminvm", "test.Svc")
    assert answer(out) == (
        "user=DEFAULT / result=allow / target=dom0 / autostart=True / requested_target=@adminvm"
    )


def test_w12_unknown_target_becomes_default(run: Run) -> None:
    _, out = run("test.Svc * work @default allow target=vault", "work", "nosuchvm", "test.Svc")
    assert logs(out)[0] == "qrexec: target 'nosuchvm' does not exist, using @default instead"
    assert answer(out) == W1.replace("requested_target=vault", "requested_target=@default")


def test_w13_broken_policy_denies_everything(run: Run) -> None:
    for service in ("test.Svc", "other.Svc"):
        _, out = run("test.Svc * work @default allow", "work", "vault", service)
        assert answer(out) == "result=deny"
        assert logs(out) == [
            f"qrexec: {service}: work -> vault: error loading policy: "
            "/etc/qubes/policy.d/30-user.policy:1: allow action for @default rule must "
            "specify target= option"
        ]
        assert out.notifications == []


def test_w14_no_target(run: Run) -> None:
    _, out = run("test.Svc * work * allow", "work", "", "test.Svc")
    assert answer(out) == "result=deny"
    assert out.reason == (
        "policy define 'allow' action at /etc/qubes/policy.d/30-user.policy:1 but no target "
        "is specified by caller or policy"
    )


def test_w15_dispvm(run: Run) -> None:
    _, out = run("test.Svc * work @dispvm allow", "work", "@dispvm", "test.Svc")
    assert answer(out) == W15


def test_w16_dispvm_without_default(run: Run) -> None:
    _, out = run("test.Svc * @anyvm @dispvm allow", "vault", "@dispvm", "test.Svc")
    assert answer(out) == "result=deny"
    assert out.reason == (
        "policy define 'allow' action to @dispvm at /etc/qubes/policy.d/30-user.policy:1 "
        "but no DispVM base is set for this VM"
    )
    assert [n.resolution for n in out.notifications] == ["deny"]


def test_w17_dispvm_template_matches_default(run: Run) -> None:
    _, out = run("test.Svc * work @dispvm:default-dvm allow", "work", "@dispvm", "test.Svc")
    assert answer(out) == W15


def test_w18_not_a_template(run: Run) -> None:
    _, out = run("test.Svc * @anyvm @anyvm allow", "work", "@dispvm:fedora", "test.Svc")
    assert answer(out) == "result=deny"
    assert out.reason == "not a template for dispvm: fedora" and out.rule is None
    assert len(out.notifications) == 1


def test_w19_dispvm_tag(run: Run) -> None:
    policy = "test.Svc * @anyvm @dispvm:@tag:anon allow"
    _, out = run(policy, "work", "@dispvm:anon-dvm", "test.Svc")
    assert answer(out) == (
        "user=DEFAULT / result=allow / target=@dispvm:anon-dvm / "
        f"target_uuid=@dispvm:uuid:{U['5']} / autostart=True / "
        "requested_target=@dispvm:anon-dvm"
    )
    _, out = run(policy, "work", "@dispvm", "test.Svc")
    assert answer(out) == "result=deny"


def test_w20_redirect_to_dispvm_template(run: Run) -> None:
    policy = "test.Svc * work @dispvm allow target=@dispvm:anon-dvm"
    _, out = run(policy, "work", "@dispvm", "test.Svc")
    assert answer(out) == (
        "user=DEFAULT / result=allow / target=@dispvm:anon-dvm / "
        f"target_uuid=@dispvm:uuid:{U['5']} / autostart=True / requested_target=@dispvm"
    )


def test_w21_redirect_to_dom0_with_user(run: Run) -> None:
    _, out = run("test.Svc * work vault allow target=dom0 user=root", "work", "vault", "test.Svc")
    assert answer(out) == (
        "user=root / result=allow / target=dom0 / autostart=True / requested_target=vault"
    )


def test_w22_autostart_no(run: Run) -> None:
    policy = "test.Svc * work vault allow autostart=no\ntest.Svc * work sys-usb allow autostart=no"
    _, out = run(policy, "work", "vault", "test.Svc")
    assert answer(out) == "result=deny"
    assert out.reason == "target vault is denied because it would require autostart"
    assert out.notifications == []
    _, out = run(policy, "work", "sys-usb", "test.Svc")
    assert answer(out) == (
        f"user=DEFAULT / result=allow / target=sys-usb / target_uuid=uuid:{U['6']} / "
        "autostart=False / requested_target=sys-usb"
    )


def test_w23_loopback(run: Run) -> None:
    policy = "test.Svc * @anyvm @anyvm allow"
    _, out = run(policy, "work", "work", "test.Svc")
    assert answer(out) == "result=deny"
    assert logs(out) == [
        "qrexec: test.Svc: work -> work: denied: loopback qrexec connection not supported"
    ]
    assert [(n.guivm, n.resolution) for n in out.notifications] == [("dom0", "deny")]
    _, out = run(policy, "work", "work", "test.Svc", just_evaluate=True)
    assert answer(out) == "result=allow" and logs(out) == []
    _, out = run(policy, "work", f"uuid:{U['1']}", "test.Svc")
    assert answer(out) == "result=deny"


def test_w24_tag_and_type(run: Run) -> None:
    policy = "test.Svc * @tag:work @type:TemplateVM allow"
    _, out = run(policy, "work", "fedora", "test.Svc")
    assert answer(out).startswith(
        f"user=DEFAULT / result=allow / target=fedora / target_uuid=uuid:{U['8']}"
    )
    assert not run(policy, "personal", "fedora", "test.Svc")[1].allowed
    assert run(policy, "default-dvm", "fedora", "test.Svc")[1].allowed


def test_w25_uuid_target(run: Run) -> None:
    policy = f"test.Svc * work uuid:{U['3']} allow"
    _, out = run(policy, "work", "vault", "test.Svc")
    assert answer(out) == W1
    _, out = run(policy, "work", f"uuid:{U['3']}", "test.Svc")
    assert answer(out) == (
        f"user=DEFAULT / result=allow / target=uuid:{U['3']} / target_uuid=uuid:{U['3']} / "
        f"autostart=True / requested_target=uuid:{U['3']}"
    )


def test_w26_ask_candidates_and_replies(run: Run) -> None:
    evaluation, out = run(W26, "work", "personal", "test.Svc")
    assert out.ask is not None and out.lines == []
    assert out.ask.guivm == "dom0"
    assert out.ask.targets == W26_TARGETS
    assert out.ask.default_target == "vault"
    done = evaluation.resolve_ask("allow:personal")
    assert answer(done) == (
        f"user=DEFAULT / result=allow / target=personal / target_uuid=uuid:{U['2']} / "
        "autostart=True / requested_target=personal"
    )
    evaluation, out = run(W26, "work", "personal", "test.Svc")
    done = evaluation.resolve_ask("deny")
    assert answer(done) == "result=deny" and done.notifications == []
    assert done.reason == "denied by the user /etc/qubes/policy.d/30-user.policy:2"
    evaluation, out = run(W26, "work", "personal", "test.Svc")
    done = evaluation.resolve_ask("allow:sys-usb")
    assert answer(done) == "result=deny"
    assert done.reason == "target sys-usb is not a valid choice"
    assert [(n.resolution, n.target) for n in done.notifications] == [("deny", "personal")]


def test_w26_ask_json(run: Run) -> None:
    _, out = run(W26, "work", "personal", "test.Svc")
    assert out.ask is not None
    text = out.ask.to_json().decode()
    assert text.startswith(
        '{"source": "work", "service": "test.Svc", "argument": "+", "targets": '
        '["@dispvm:anon-dvm", "@dispvm:default-dvm", "anon-dvm", "default-dvm", "fedora", '
        '"personal", "relay", "remote1", "vault"], "default_target": "vault", "icons": '
        '{"dom0": "adminvm-black", "work": "appvm-red", '
    )
    assert text.endswith('"@dispvm:default-dvm": "dispvm-red", "@dispvm:anon-dvm": "dispvm-red"}}')


def test_w27_default_target_dropped(run: Run) -> None:
    policy = "test.Svc * work @anyvm ask default_target=sys-hidden"
    _, out = run(policy, "work", "vault", "test.Svc")
    assert out.ask is not None
    assert out.ask.targets == tuple(sorted((*W26_TARGETS, "sys-usb")))
    assert out.ask.default_target == ""
    warning = "warning: policy define default_target=sys-hidden"
    assert any(text.startswith(warning) for text in logs(out))


def test_w28_ask_without_guivm(run: Run) -> None:
    _, out = run("test.Svc * sys-usb @anyvm ask", "sys-usb", "work", "test.Svc")
    assert out.ask is None and answer(out) == "result=deny"
    assert logs(out) == [
        'test.Svc not allowed from sys-usb: the resolution was "ask", but source domain has '
        "no GuiVM",
        "qrexec: test.Svc: sys-usb -> work: denied: denied by the user "
        "/etc/qubes/policy.d/30-user.policy:1",
    ]
    assert out.notifications == []


def test_w29_ask_autostart_no(run: Run) -> None:
    _, out = run("test.Svc * work @anyvm ask autostart=no", "work", "vault", "test.Svc")
    assert out.ask is not None and out.ask.targets == ("relay", "sys-usb")


def test_w30_assume_yes_and_just_evaluate(run: Run) -> None:
    policy = "test.Svc * work @anyvm ask"
    _, out = run(policy, "work", "vault", "test.Svc", assume_yes_for_ask=True)
    assert answer(out) == W1
    _, out = run(policy, "work", "@dispvm", "test.Svc", assume_yes_for_ask=True)
    assert answer(out) == "result=deny" and out.reason == "target @dispvm is not a valid choice"
    _, out = run(policy, "work", "vault", "test.Svc", just_evaluate=True)
    assert answer(out) == "result=deny" and logs(out) == [] and out.notifications == []


def test_w31_ask_with_dispvm_target(run: Run) -> None:
    evaluation, out = run("test.Svc * work @anyvm ask target=@dispvm", "work", "vault", "test.Svc")
    assert out.ask is not None and out.ask.targets == ("@dispvm:default-dvm",)
    done = evaluation.resolve_ask("allow:@dispvm:default-dvm")
    assert answer(done) == W15.replace("requested_target=@dispvm", "requested_target=vault")


def test_w32_remote_vm(run: Run) -> None:
    _, out = run("test.Svc * work remote1 allow user=root", "work", "remote1", "test.Svc+x")
    assert answer(out) == (
        f"user=DEFAULT / result=allow / target=relay / target_uuid=uuid:{U['9']} / "
        "autostart=True / requested_target=remote1 / "
        "service=qubesair.SSHProxy+remote1+test.Svc+x"
    )
    assert logs(out) == [
        "qrexec: test.Svc+x: work -> remote1: allowed to remote1",
        "Ignoring user directive in policy. This is not supported in the case of RemoveVM.",
    ]


def test_w33_requested_source(run: Run) -> None:
    policy = "test.Svc * remote1 work allow"
    _, out = run(policy, "relay", "work", "test.Svc", requested_source="remote1")
    assert answer(out) == (
        f"user=DEFAULT / result=allow / target=work / target_uuid=uuid:{U['1']} / "
        "autostart=True / requested_target=work / policy_source=remote1"
    )
    _, out = run(policy, "personal", "vault", "test.Svc", requested_source="remote1")
    assert answer(out) == "result=deny" and out.reason == "personal is not a relay for remote1"


def test_w34_legacy_ask(run: Run) -> None:
    files = {f"{LEGACY}/test.Add": "$anyvm $anyvm ask\n", COMPAT: "!compat-4.0\n"}
    evaluation, out = run(files, "work", "personal", "test.Add")
    assert out.rule is not None and str(out.rule) == "test.Add\t*\t@anyvm\t@anyvm\task"
    assert out.ask is not None
    assert out.ask.targets == tuple(sorted((*W26_TARGETS, "sys-usb")))
    done = evaluation.resolve_ask("deny")
    assert done.reason == "denied by the user /etc/qubes-rpc/policy/test.Add:1"


def test_w35_w36_legacy_argument_files(run: Run) -> None:
    default = {"/etc/qubes/policy.d/90-default.policy": "test.Dev * @anyvm @anyvm allow\n"}
    files = {f"{LEGACY}/test.Dev+usb1": "sys-usb work allow\n", COMPAT: "!compat-4.0\n"}
    files |= default
    _, out = run(files, "personal", "work", "test.Dev+usb1")
    assert answer(out) == "result=deny"
    assert out.reason == "denied by policy /etc/qubes-rpc/policy/test.Dev+usb1:None"
    assert run(files, "personal", "work", "test.Dev+usb2")[1].allowed
    assert run(files, "sys-usb", "work", "test.Dev+usb1")[1].allowed
    generic = {f"{LEGACY}/test.Dev": "sys-usb work allow\n", COMPAT: "!compat-4.0\n"} | default
    assert run(generic, "personal", "work", "test.Dev")[1].allowed


def test_w37_legacy_bare_words(run: Run) -> None:
    files = {f"{LEGACY}/test.X": "anyvm dispvm allow,user=root\n", COMPAT: "!compat-4.0\n"}
    _, out = run(files, "work", "@dispvm", "test.X")
    assert out.rule is not None
    assert str(out.rule) == "test.X\t*\t@anyvm\t@dispvm\tallow user=root"
    assert answer(out) == W15.replace("user=DEFAULT", "user=root")


def test_w38_legacy_redirect(run: Run) -> None:
    files = {f"{LEGACY}/test.Y": "work vault allow, target=personal\n", COMPAT: "!compat-4.0\n"}
    _, out = run(files, "work", "vault", "test.Y")
    assert answer(out) == (
        f"user=DEFAULT / result=allow / target=personal / target_uuid=uuid:{U['2']} / "
        "autostart=True / requested_target=vault"
    )


def test_w39_invalid_filename(run: Run) -> None:
    files = {"/etc/qubes/policy.d/30-User.policy": "test.Svc * work vault allow\n"}
    _, out = run(files, "work", "vault", "test.Svc")
    assert answer(out) == "result=deny"
    assert logs(out) == [
        "qrexec: test.Svc: work -> vault: denied: invalid filename: "
        "/etc/qubes/policy.d/30-User.policy"
    ]
    assert [n.resolution for n in out.notifications] == ["deny"]


def test_w40_runtime_hides_persistent(run: Run) -> None:
    files = {
        USER: "test.Svc * work vault deny\n",
        "/run/qubes/policy.d/30-user.policy": "test.Svc * work vault allow\n",
    }
    assert run(files, "work", "vault", "test.Svc")[1].allowed
    del files["/run/qubes/policy.d/30-user.policy"]
    assert not run(files, "work", "vault", "test.Svc")[1].allowed


def test_w41_star_service_needs_star_argument(run: Run) -> None:
    _, out = run("* +x @anyvm @anyvm allow", "work", "vault", "test.Svc")
    assert answer(out) == "result=deny"
    assert logs(out)[0].endswith("30-user.policy:1: only * argument allowed for * service")


def test_w42_include_service(run: Run) -> None:
    files = {
        USER: "!include-service test.Svc +a include/legacy-a\n",
        "/etc/qubes/policy.d/include/legacy-a": "$anyvm vault allow\n",
    }
    assert run(files, "work", "vault", "test.Svc+a")[1].allowed
    _, out = run(files, "work", "vault", "test.Svc+b")
    assert answer(out) == "result=deny"
