"""Policy (S31-S47) end to end: qrexec-client-vm in a domain, real daemons and
agents, and dom0's real qrexec-policy-daemon and qrexec-policy-agent (fixtures/world.py,
`policy_daemon=True`).

S40 is test_host_scenarios_a.py::test_s1_readme_howto (bare `anyvm`); S43 and S44 talk to the
policy sockets only: test_policy_daemon.py::test_strict_request_parsing and ::test_eval_simple.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from .fixtures.processes import program, temporary_host, wait_for
from .fixtures.world import USER, World

DOMIDS = {"work": 5, "personal": 6, "vault": 7, "sys-usb": 10, "relay": 12}
COMPAT = {"35-compat": "!compat-4.0\n"}
#: the services: each says where it runs, for whom, with which argument
SVC = '#!/bin/sh\necho "$QREXEC_SERVICE_FULL_NAME in {vm} from $QREXEC_REMOTE_DOMAIN"\n'


@pytest.fixture(scope="module")
def world_d() -> Iterator[World]:
    with temporary_host("qd") as host:
        w = World(host, policy_daemon=True).start_policy_side()
        for name, domid in DOMIDS.items():
            w.domain(name, domid)
        for vm in (*DOMIDS, "dom0"):
            for name in ("test.Svc", "test.Dev"):
                w.service(vm, name, SVC.format(vm=vm))
        w.service("vault", "test.File", '#!/bin/sh\necho "content of $1"\n')
        w.service("relay", "qubesair.SSHProxy",
                        '#!/bin/sh\necho "proxy $QREXEC_SERVICE_FULL_NAME arg $1 from '
                        '$QREXEC_REMOTE_DOMAIN as $(id -un)"\n')
        yield w


@pytest.fixture
def w(world_d: World) -> World:
    world_d.reset()
    return world_d


def refused(done: subprocess.CompletedProcess[bytes]) -> None:
    """A refused call: `Request refused` on stderr, status 126."""
    assert (done.returncode, done.stderr) == (126, b"Request refused\n"), done


def ran(done: subprocess.CompletedProcess[bytes], text: str) -> None:
    assert (done.returncode, done.stdout.decode()) == (0, text + "\n"), done


def test_s31_per_argument_rules(w: World) -> None:
    """S31: per-argument rules (W5)."""
    w.policy({"30-user": "test.File +f1 work vault allow\n"
                           "test.File +f2 personal vault allow\n"
                           "test.File * @anyvm @anyvm deny\n"})
    ran(w.call("work", "vault", "test.File+f1"), "content of f1")
    refused(w.call("personal", "vault", "test.File+f1"))
    ran(w.call("personal", "vault", "test.File+f2"), "content of f2")
    assert f"test.File+f1: personal -> vault: denied: denied by policy {w.etc}/30-user.policy:3" \
        in w.log()


def test_s32_first_match_across_files(w: World) -> None:
    """S32: the first match across files wins."""
    w.policy({"10-a": "test.Svc * work vault deny\n", "90-b": "test.Svc * work vault allow\n"})
    refused(w.call("work", "vault", "test.Svc"))
    assert f"denied: denied by policy {w.etc}/10-a.policy:1" in w.log()


def test_s33_syntax_error(w: World) -> None:
    """S33: a syntax error refuses every call until fixed; lint names the line."""
    w.policy({"30-user": "test.Svc * work vault allow\ntest.File * work vault allow\n"})
    ran(w.call("work", "vault", "test.Svc"), "test.Svc+ in vault from work")
    daemon = w.policy_daemon.proc
    bad = w.etc / "40-x.policy"
    bad.write_text("test.Svc * work vault allow default_target=personal\n")
    mark = len(w.log())
    refused(w.call("work", "vault", "test.Svc"))
    refused(w.call("work", "vault", "test.File+f1"))  # an unrelated service
    logged = w.log()[mark:]
    for call in ("test.Svc: work -> vault", "test.File+f1: work -> vault"):
        assert f"qrexec: {call}: error loading policy: {bad}:1: " in logged, logged
    lint = subprocess.run([*program("qubes-policy-lint"), "40-x.policy"], cwd=w.etc,
                          capture_output=True, env=w.dom0_env(), timeout=60)
    assert (lint.returncode, lint.stdout + lint.stderr) == (1, (
        b"40-x.policy:1: error: invalid parameters for action Allow: "
        b"['default_target=personal']\n")), lint
    bad.write_text("test.Svc * work vault allow\n")
    ran(w.call("work", "vault", "test.Svc"), "test.Svc+ in vault from work")
    assert w.policy_daemon.proc is daemon and daemon is not None and daemon.poll() is None


def test_s34_unknown_target(w: World) -> None:
    """S34: an unknown target becomes @default."""
    w.policy({"30-user": "test.Svc * work @default allow target=vault\n"})
    ran(w.call("work", "nosuchvm", "test.Svc"), "test.Svc+ in vault from work")
    assert "target 'nosuchvm' does not exist, using @default instead" in w.log()


W26_TARGETS = [
    "@dispvm:anon-dvm", "@dispvm:default-dvm", "anon-dvm", "default-dvm", "fedora",
    "personal", "relay", "remote1", "vault",
]  # fmt: skip


def test_s35_ask_candidates(w: World) -> None:
    """S35: ask candidates (W26) as the answer program sees them."""
    w.policy({"30-user": "test.Svc * work sys-usb deny\n"
                           "test.Svc * work @anyvm ask default_target=vault\n"})
    w.answer("allow:personal")
    ran(w.call("work", "personal", "test.Svc"), "test.Svc+ in personal from work")
    asked = json.loads(w.ask_json.read_text())
    assert asked["targets"] == W26_TARGETS
    assert asked["default_target"] == "vault"
    w.answer("allow:sys-usb")
    refused(w.call("work", "personal", "test.Svc"))
    assert json.loads(w.ask_json.read_text())["targets"] == W26_TARGETS  # it was asked


def test_s36_no_gui_vm(w: World) -> None:
    """S36: ask without a GUI VM refuses without asking."""
    w.policy({"30-user": "test.Svc * sys-usb @anyvm ask\n"})
    w.answer("allow:work")
    refused(w.call("sys-usb", "work", "test.Svc"))
    assert not w.ask_json.exists()
    assert ('test.Svc not allowed from sys-usb: the resolution was "ask", but source domain '
            "has no GuiVM") in w.log()


def test_s37_loopback(w: World) -> None:
    """S37: loopback is refused, with a deny notification."""
    w.policy({"30-user": "test.Svc * @anyvm @anyvm allow\n"})
    refused(w.call("work", "work", "test.Svc"))
    w.policy_daemon.agent.wait(1)
    assert w.notifications() == [(b"policy.Notify dom0 name dom0", {
        "resolution": "deny", "service": "test.Svc", "argument": "+", "source": "work",
        "target": "work"})]
    assert "work -> work: denied: loopback qrexec connection not supported" in w.log()


def test_s38_anyvm_never_means_dom0(w: World) -> None:
    """S38: @anyvm never means dom0, in policy.d or legacy files."""
    w.policy({"30-user": "test.Svc * @anyvm @anyvm allow\n"})
    refused(w.call("work", "dom0", "test.Svc"))
    w.reset()
    w.policy(COMPAT)
    (w.legacy / "test.Svc").write_text("$anyvm $anyvm allow\n")
    refused(w.call("work", "dom0", "test.Svc"))
    ran(w.call("work", "personal", "test.Svc"), "test.Svc+ in personal from work")
    # dom0's service is there: a rule naming dom0 reaches it
    (w.legacy / "test.Svc").write_text("$anyvm dom0 allow\n")
    ran(w.call("work", "dom0", "test.Svc"), "test.Svc+ in dom0 from work")


def test_s39_legacy_files_under_compat(w: World) -> None:
    """S39: legacy files under !compat-4.0 (W35)."""
    w.policy({**COMPAT, "90-default": "test.Dev * @anyvm @anyvm allow\n"})
    (w.legacy / "test.Dev+usb1").write_text("sys-usb work allow\n")
    refused(w.call("personal", "work", "test.Dev+usb1"))
    ran(w.call("personal", "work", "test.Dev+usb2"), "test.Dev+usb2 in work from personal")
    ran(w.call("sys-usb", "work", "test.Dev+usb1"), "test.Dev+usb1 in work from sys-usb")


def test_s41_runtime_override(w: World) -> None:
    """S41: the runtime directory overrides (W40)."""
    w.policy({"30-user": "test.Svc * work vault deny\n"})
    w.policy({"30-user": "test.Svc * work vault allow\n"}, w.run)
    ran(w.call("work", "vault", "test.Svc"), "test.Svc+ in vault from work")
    (w.run / "30-user.policy").unlink()
    refused(w.call("work", "vault", "test.Svc"))


def test_s42_policy_daemon_fallback(w: World) -> None:
    """S42: without the policy daemon, qrexec-policy-exec decides alike."""
    w.policy({"30-user": "test.Svc * work vault allow\n"})
    calls = [("work", "vault"), ("personal", "vault")]
    with_daemon = [w.call(src, dst, "test.Svc") for src, dst in calls]
    ran(with_daemon[0], "test.Svc+ in vault from work")
    refused(with_daemon[1])
    assert not w.program_args.exists()
    w.stop_policy_daemon()
    try:
        without = [w.call(src, dst, "test.Svc") for src, dst in calls]
        assert [(d.returncode, d.stdout, d.stderr) for d in without] == [
            (d.returncode, d.stdout, d.stderr) for d in with_daemon]
        assert w.program_args.read_text().splitlines() == [
            "-- work vault test.Svc", "-- personal vault test.Svc"]
    finally:
        w.start_policy_daemon()


def test_s45_notifications(w: World) -> None:
    """S45: notifications."""
    w.policy({"30-user": "test.Svc * work vault allow notify=yes\n"})
    ran(w.call("work", "vault", "test.Svc"), "test.Svc+ in vault from work")
    w.policy_daemon.agent.wait(1)
    expected = {"resolution": "allow", "service": "test.Svc", "argument": "+",
                "source": "work", "target": "vault"}
    assert w.notifications() == [(b"policy.Notify dom0 name dom0", expected)]
    w.reset()
    w.policy({"30-user": "test.Svc * work vault deny notify=no\n"})
    refused(w.call("work", "vault", "test.Svc"))
    wait_for(lambda: "work -> vault: denied: denied by policy" in w.log(), 30, "the deny")
    w.policy({"30-user": "test.Svc * work vault deny\n"})
    refused(w.call("work", "vault", "test.Svc"))
    w.policy_daemon.agent.wait(1)
    # only the second deny notified: had the first one, it would have arrived by now
    assert w.notifications() == [(b"policy.Notify dom0 name dom0",
                                  {**expected, "resolution": "deny"})]


def test_s46_remote_vm_relay(w: World) -> None:
    """S46: a RemoteVM call runs the transport service in the relay (W32)."""
    w.policy({"30-user": "test.Svc * work remote1 allow user=root\n"})
    ran(w.call("work", "remote1", "test.Svc+x"),
        f"proxy qubesair.SSHProxy+remote1+test.Svc+x arg remote1+test.Svc+x from work as {USER}")
    assert "Ignoring user directive in policy. This is not supported in the case of RemoveVM." \
        in w.log()


def test_s47_requested_source(w: World) -> None:
    """S47: requested source (W33)."""
    w.policy({"30-user": "test.Svc * remote1 work allow\n"})
    ran(w.call("relay", "--source-qube=remote1", "work", "test.Svc"),
        "test.Svc+ in work from remote1")
    refused(w.call("personal", "--source-qube=remote1", "work", "test.Svc"))
    assert "personal is not a relay for remote1" in w.log()
