"""Header and JSON validation, reply checking and notification texts
(docs/reference/policy.md#ask-and-notify)."""

from __future__ import annotations

import pytest

from pyqrexec.policy_agent.request import (
    NotifyRequest,
    RequestError,
    checked_reply,
    notification_texts,
    parse_header,
    parse_request,
    plain_text,
    target_label,
)

from .helpers import TARGETS, ask, ask_data, ask_json, notify_data


def test_header_words() -> None:
    assert parse_header(b"policy.Ask dom0 name dom0") == "policy.Ask"
    assert parse_header(b"policy.Notify dom0") == "policy.Notify"  # from a GUI qube's agent
    for bad in (b"policy.Ask", b"", b"policy.Other dom0", b"policy.Ask+x dom0", b"\xff dom0"):
        with pytest.raises(RequestError):
            parse_header(bad)


def test_ask_parsed() -> None:
    request = ask()
    assert request.source == "work"
    assert request.service == "test.Svc"
    assert request.argument == "+arg"
    assert request.shown_argument == "+arg"
    assert request.targets == tuple(TARGETS)
    assert request.default_target == "vault"
    assert dict(request.icons)["work"] == "appvm-red"
    assert request.raw == ask_json()
    assert ask(argument="+").shown_argument == ""
    assert ask(icons=None).icons == ()


def test_default_target_not_a_candidate_is_dropped() -> None:
    assert ask(default_target="sys-usb").default_target == ""
    assert ask(default_target="").default_target == ""


@pytest.mark.parametrize(
    "data",
    [
        b"policy.Ask dom0 name dom0",  # no NUL
        b"policy.Ask dom0\0not json",
        b"policy.Ask dom0\0[1, 2]",
        b"policy.Ask dom0\0\xff\xfe",
        b"policy.Ask dom0\0" + b"[" * 100000,
        ask_data(source=None),
        ask_data(source=5),
        ask_data(source=""),
        ask_data(source="wo rk"),
        ask_data(source="work\x1b[2J"),
        ask_data(source="x" * 257),
        ask_data(service="t\u00e9st"),
        ask_data(argument="arg"),
        ask_data(argument=None),
        ask_data(targets=[]),
        ask_data(targets="vault"),
        ask_data(targets=["vault", 3]),
        ask_data(targets=["vault", "vault"]),
        ask_data(targets=["va\nult"]),
        ask_data(targets=None),
        ask_data(default_target=None),
        ask_data(default_target=["vault"]),
        ask_data(icons=[]),
        ask_data(icons={"work": 1}),
    ],
)
def test_hostile_ask_rejected(data: bytes) -> None:
    with pytest.raises(RequestError):
        parse_request(data)


def test_notify_parsed_and_rejected() -> None:
    assert parse_request(notify_data()) == NotifyRequest("deny", "test.Svc", "+", "work", "vault")
    for bad in (notify_data("maybe"), notify_data(argument=""), b"policy.Notify dom0\0{}"):
        with pytest.raises(RequestError):
            parse_request(bad)


def test_checked_reply() -> None:
    request = ask()
    assert checked_reply("allow:vault", request) == "allow:vault"
    assert checked_reply("allow:@dispvm:default-dvm\n", request) == "allow:@dispvm:default-dvm"
    assert checked_reply("deny", request) == "deny"
    for bad in ("allow:sys-usb", "allow:", "allow", "yes", "", " allow:vault", "allow:vault x"):
        assert checked_reply(bad, request) == "deny"


def test_target_label() -> None:
    assert target_label("@dispvm:default-dvm") == "Disposable VM (default-dvm)"
    assert target_label("vault") == "vault"


def test_notification_texts() -> None:
    note = NotifyRequest("allow", "test.Svc", "+a&b", "work", "vault")
    assert notification_texts(note) == (
        "Allowed: test.Svc",
        "Allowed <b>test.Svc+a&amp;b</b> from <b>work</b> to <b>vault</b>",
        "",
    )
    deny = NotifyRequest("deny", "test.Svc", "+", "work", "vault")
    assert notification_texts(deny) == (
        "Denied: test.Svc",
        "Denied <b>test.Svc</b> from <b>work</b> to <b>vault</b>",
        "dialog-error",
    )
    fail = NotifyRequest("fail", "test.Svc", "+", "work", "<x>")
    summary, body, icon = notification_texts(fail)
    assert (summary, icon) == ("Failed: test.Svc", "dialog-warning")
    assert body == "Failed to execute <b>test.Svc</b> (from <b>work</b> to <b>&lt;x&gt;</b>)"
    assert plain_text(body) == "Failed to execute test.Svc (from work to <x>)"
