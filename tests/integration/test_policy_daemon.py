"""qrexec-policy-daemon as a process: the request socket, EvalSimple/EvalGUI, reloads, dialogs."""

from __future__ import annotations

import json
import socket
import threading

from .fixtures.fakes import query
from .fixtures.policy import PolicyDaemon

W1 = (
    b"user=DEFAULT\nresult=allow\ntarget=vault\n"
    b"target_uuid=uuid:33333333-3333-3333-3333-333333333333\nautostart=True\n"
    b"requested_target=vault"
)


def req(source: str, target: str, service: str, extra: str = "") -> bytes:
    return (
        f"source={source}\n{extra}intended_target={target}\nservice_and_arg={service}\n\n".encode()
    )


def test_allow_and_deny(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    setup.start()
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    assert query(setup.socket, req("personal", "vault", "test.Svc")) == b"result=deny"
    setup.agent.wait(1)
    log = setup.stop()
    assert "qrexec: test.Svc+: work -> vault: allowed to vault" in log
    assert "qrexec: test.Svc: personal -> vault: denied: no matching rule found" in log
    [(header, payload)] = setup.agent.received(b"policy.Notify")
    assert header == b"policy.Notify dom0 name dom0"
    assert json.loads(payload)["resolution"] == "deny"


def test_request_without_empty_line_and_v4_keys(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    setup.start()
    data = b"source=work\nrequested_source=\nintended_target=vault\nservice_and_arg=test.Svc"
    assert query(setup.socket, data) == W1


def test_strict_request_parsing(setup: PolicyDaemon) -> None:
    """S43: a `domain_id` line (or any other bad request) closes without an answer; the
    same request without it is answered."""
    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    setup.start()
    bad = [
        b"domain_id=5\n" + req("work", "vault", "test.Svc"),
        req("work", "vault", "test.Svc", "source=work\n"),
        req("work", "vault", "test.Svc", "just_evaluate=maybe\n"),
        req("work", "vault", "test.Svc", "garbage\n"),
        req("w\xf6rk", "vault", "test.Svc"),
        b"source=work\nintended_target=vault\n\n",
    ]
    for data in bad:
        assert query(setup.socket, data) == b"", data
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    assert setup.stop().count("error parsing policy request:") == len(bad)


def test_reload_sees_finished_change(setup: PolicyDaemon) -> None:
    policy = setup.write("30-user.policy", "test.Svc * work vault allow\n")
    setup.start()
    for _ in range(5):  # rewrite in place, same size: stat data alone may not change
        assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
        policy.write_text("test.Svc * work vault deny \n")
        assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
        policy.write_text("test.Svc * work vault allow\n")
    runtime = setup.write("30-user.policy", "test.Svc * work vault deny\n", setup.run)
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    runtime.unlink()
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1


def test_broken_policy_denies_and_recovers(setup: PolicyDaemon) -> None:
    path = setup.write("40-x.policy", "test.Svc * work vault allow default_target=personal\n")
    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    setup.start()
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    assert query(setup.socket, req("work", "vault", "other.Svc")) == b"result=deny"
    path.write_text("test.Svc * work vault allow\n")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    log = setup.stop()
    assert (
        "qrexec: other.Svc: work -> vault: error loading policy: "
        f"{path}:1: invalid parameters for action Allow: ['default_target=personal']"
    ) in log
    assert setup.agent.received(b"policy.Notify") == []


def test_system_info_changes_are_seen(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", "test.Svc * work vault allow autostart=no\n")
    setup.start()
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    doc = json.loads(setup.qubesd.system_info)
    doc["domains"]["vault"]["power_state"] = "Running"
    setup.qubesd.system_info = json.dumps(doc).encode()
    assert query(setup.socket, req("work", "vault", "test.Svc")).startswith(b"user=DEFAULT")
    setup.qubesd.errors["internal.GetSystemInfo"] = b"2\0QubesException\0\0no\0"
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    assert "error getting system info: QubesException: no" in setup.stop()


def test_ask_dialog(setup: PolicyDaemon) -> None:
    setup.write(
        "30-user.policy",
        "test.Svc * work sys-usb deny\ntest.Svc * work @anyvm ask default_target=vault\n",
    )
    setup.agent.answer = lambda _: b"allow:personal"
    setup.start()
    answer = query(setup.socket, req("work", "personal", "test.Svc"))
    assert answer.startswith(b"user=DEFAULT\nresult=allow\ntarget=personal\n")
    [(header, payload)] = setup.agent.received(b"policy.Ask")
    assert header == b"policy.Ask dom0 name dom0"
    ask = json.loads(payload)
    assert ask["targets"] == [
        "@dispvm:anon-dvm", "@dispvm:default-dvm", "anon-dvm", "default-dvm", "fedora",
        "personal", "relay", "remote1", "vault",
    ]  # fmt: skip
    assert ask["default_target"] == "vault"


def test_slow_ask_does_not_block_other_requests(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", "test.Ask * work @anyvm ask\ntest.Svc * work vault allow\n")
    release = threading.Event()
    asked = threading.Event()

    def slow(_: bytes) -> bytes:
        asked.set()
        release.wait(30)
        return b"allow:personal"

    setup.agent.answer = slow
    setup.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as pending:
        pending.connect(setup.socket)
        pending.sendall(req("work", "personal", "test.Ask"))
        assert asked.wait(30)
        for _ in range(20):  # answered while the dialog is still open
            assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
        assert not release.is_set()
        release.set()
        pending.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: pending.recv(4096), b""))
    assert answer.startswith(b"user=DEFAULT\nresult=allow\ntarget=personal\n")


def test_eval_simple(setup: PolicyDaemon) -> None:
    """S44: ask is assumed yes; an empty argument or a 32-byte source closes unanswered."""
    setup.write("30-user.policy", "test.Svc * work vault ask\n")
    setup.start()
    head = b"policy.EvalSimple+test.Svc sys-gui keyword adminvm\0"
    assert query(setup.eval_socket, head + b"work\0vault") == b"result=allow\n"
    assert query(setup.eval_socket, head + b"work\0personal") == b"result=deny\n"
    empty = b"policy.EvalSimple+ sys-gui keyword adminvm\0"
    assert query(setup.eval_socket, empty + b"work\0vault") == b""
    assert query(setup.eval_socket, head + b"w" * 32 + b"\0vault") == b""
    wrong = b"policy.EvalGUI+test.Svc sys-gui keyword adminvm\0"
    assert query(setup.eval_socket, wrong + b"work\0vault") == b""
    assert setup.agent.received(b"policy.Ask") == []


def test_eval_gui_requires_guivm_tags(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    head = b"policy.EvalGUI+test.Svc sys-gui keyword adminvm\0"
    setup.start()
    assert query(setup.gui_socket, head + b"work\0vault") == b""
    doc = json.loads(setup.qubesd.system_info)
    for name in ("work", "vault"):
        doc["domains"][name]["tags"].append("guivm-sys-gui")
    setup.qubesd.system_info = json.dumps(doc).encode()
    assert query(setup.gui_socket, head + b"work\0vault") == b"result=allow\n"


def test_legacy_only_host(setup: PolicyDaemon) -> None:
    setup.etc.rmdir()
    setup.write("test.Add", "$anyvm $anyvm allow\n", setup.legacy)
    setup.start()
    answer = query(setup.socket, req("work", "personal", "test.Add"))
    assert answer.startswith(b"user=DEFAULT\nresult=allow\ntarget=personal\n")
    assert query(setup.socket, req("work", "dom0", "test.Add")) == b"result=deny"
    assert query(setup.socket, req("work", "personal", "test.Other")) == b"result=deny"


def test_reload_follows_includes_outside_the_directories(setup: PolicyDaemon) -> None:
    outside = setup.tmp / "outside"
    setup.write("30-user.policy", f"!include-dir {outside}\n!include {outside}-file\n")
    setup.start()
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"  # not a dir
    outside.mkdir()
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"  # not a file
    (setup.tmp / "outside-file").write_text("")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"  # no rule
    (outside / "a.policy").write_text("test.Svc * work vault allow\n")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    assert "not a directory" in setup.stop()


def test_legacy_file_named_plus_argument(setup: PolicyDaemon) -> None:
    """A legacy file `+x` answers requests for `+x` (the empty service); a broken one breaks the
    whole policy, as any policy file does."""
    setup.write("35-compat.policy", "!compat-4.0\n")
    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    plus_x = setup.write("+x", "work vault allow\n", setup.legacy)
    setup.start()
    assert query(setup.socket, req("work", "vault", "+x")) == W1
    assert query(setup.socket, req("work", "vault", "+y")) == b"result=deny"
    plus_x.write_text("work vault allow,default_target=personal\n")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == b"result=deny"
    log = setup.stop()
    assert "skipping legacy policy file" not in log
    assert f"qrexec: test.Svc: work -> vault: error loading policy: {plus_x}:1: " in log
