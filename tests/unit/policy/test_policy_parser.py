"""The policy.d line grammar and its error messages
(docs/reference/policy.md#rule-syntax to docs/reference/policy.md#actions-and-parameters)."""

from __future__ import annotations

import pytest

from pyqrexec.policy.errors import PolicySyntaxError
from pyqrexec.policy.parser import ActionType, Directive, Rule, parse_line, split_lines
from pyqrexec.policy.tokens import Kind


def error(line: str) -> str:
    with pytest.raises(PolicySyntaxError) as info:
        parse_line(line, "f.policy", 7)
    assert str(info.value).startswith("f.policy:7: ")
    return info.value.msg


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("test.Svc * work vault", "wrong number of fields"),
        ("test+Svc * work vault allow", "service 'test+Svc' contains invalid characters: ('+',)"),
        ("t@s$ * work vault allow", "service 't@s$' contains invalid characters: ('$', '@')"),
        ("test.Svc +a/b work vault allow", "argument '+a/b' contains invalid characters: ('/',)"),
        ("test.Svc arg work vault allow", "argument 'arg' does not start with +"),
        ("* +x @anyvm @anyvm allow", "only * argument allowed for * service"),
        ("test.Svc * @dispvm vault allow", "invalid source token: '@dispvm'"),
        ("test.Svc * @default vault allow", "invalid source token: '@default'"),
        ("test.Svc * work @foo allow", "invalid target token: '@foo'"),
        ("test.Svc * work @tag: allow", "invalid empty @tag: token: '@tag:'"),
        ("test.Svc * work @tag:@x allow", "invalid target token: '@tag:@x'"),
        ("test.Svc * work @dispvm:@x allow", "invalid target token: '@dispvm:@x'"),
        (
            "test.Svc * work @dispvm:@tag: allow",
            "invalid empty @dispvm:@tag: token: '@dispvm:@tag:'",
        ),
        ("test.Svc * work vault permit", "invalid action: permit"),
        ("test.Svc * work vault allow user", "invalid action parameter syntax: 'user'"),
        ("test.Svc * work vault allow user=a user=b", "parameter given twice: 'user'"),
        ("test.Svc * work vault deny notify=1", "'notify' is '1', but can be only 'yes' or 'no'"),
        (
            "test.Svc * work vault allow autostart=maybe",
            "'autostart' is 'maybe', but can be only 'yes' or 'no'",
        ),
        (
            "test.Svc * work vault allow user=x foo=bar",
            "invalid parameters for action Allow: ['user=x', 'foo=bar']",
        ),
        ("test.Svc * work vault deny target=x", "invalid parameters for action Deny: ['target=x']"),
        ("test.Svc * work vault allow target=", "invalid empty redirect token"),
        ("test.Svc * work vault ask default_target=", "invalid empty redirect token"),
        ("test.Svc * work vault allow target=@tag:", "invalid redirect token: '@tag:'"),
        ("test.Svc * work vault allow target=*", "invalid redirect token: '*'"),
        ("test.Svc * work vault allow target=@anyvm", "invalid redirect token: '@anyvm'"),
        (
            "test.Svc * work @default allow",
            "allow action for @default rule must specify target= option",
        ),
        ("test.Svc * work vault allow user=", "invalid user name: ''"),
        ("test.Svc * work vault allow user=a:b", "invalid user name: 'a:b'"),
        ("!include", "invalid number of params"),
        ("!include a b", "invalid number of params"),
        ("!include-dir", "invalid number of params"),
        ("!include-service a *", "invalid number of params"),
        ("!include-service * +a x", "only * argument allowed for * service"),
        ("!compat-4.0 x", "invalid number of params"),
        ("!includes x", "invalid directive"),
    ],
)
def test_error_messages(line: str, message: str) -> None:
    assert error(line) == message


def test_check_order() -> None:
    """The first failing check, in the rule syntax's order, is reported."""
    assert error("a+ b @foo @bar permit x") == "service 'a+' contains invalid characters: ('+',)"
    assert error("a * @foo @bar permit x") == "invalid source token: '@foo'"
    assert error("a * work @bar permit x") == "invalid target token: '@bar'"
    assert error("a * work vault permit x") == "invalid action: permit"
    assert error("a * w v deny x notify=2") == "invalid action parameter syntax: 'x'"
    assert (
        error("a * w v deny target=x notify=2") == "'notify' is '2', but can be only 'yes' or 'no'"
    )
    assert (
        error("a * w @default allow user=: default_target=x")
        == "invalid parameters for action Allow: ['user=:', 'default_target=x']"
    )
    assert error("a * w @default allow user=:") == (
        "allow action for @default rule must specify target= option"
    )


def test_rule_fields_and_defaults() -> None:
    rule = parse_line(
        "  test.Svc\t+arg  @tag:work  @dispvm:@tag:anon  ask default_target=vault ", "f", 1
    )
    assert isinstance(rule, Rule)
    assert (rule.service, rule.argument, rule.where) == ("test.Svc", "+arg", "f:1")
    assert rule.source.kind is Kind.TAG and rule.source.value == "work"
    assert rule.target.kind is Kind.DISPVM_TAG and rule.target.value == "anon"
    action = rule.action
    assert action.type is ActionType.ASK and action.default_target is not None
    assert (action.notifies, action.autostarts, action.user) == (False, True, None)
    deny = parse_line("x * * * deny", "f", 1)
    assert isinstance(deny, Rule) and deny.action.notifies


def test_tokens_per_column() -> None:
    admin = "uuid:00000000-0000-0000-0000-000000000000"
    for dst in ("*", "@anyvm", "@default", "@adminvm", "dom0", "@type:AppVM", "@dispvm",
                "@dispvm:x", admin, "weird$name"):  # fmt: skip
        assert isinstance(parse_line(f"s * work {dst} deny", "f", 1), Rule)
    for src in ("*", "@anyvm", "@adminvm", "@tag:t", "@type:T", "@dispvm:x", "@dispvm:@tag:t"):
        assert isinstance(parse_line(f"s * {src} vault deny", "f", 1), Rule)
    for rdr in ("dom0", "@adminvm", "@dispvm", "@dispvm:x", "vault", "uuid:x"):
        assert isinstance(parse_line(f"s * work vault allow target={rdr}", "f", 1), Rule)


def test_blank_comment_directive() -> None:
    assert parse_line("   ", "f", 1) is None
    assert parse_line("  # comment !include", "f", 1) is None
    d = parse_line("!include-service test.Svc +a include/x", "f", 3)
    assert d == Directive("!include-service", ("test.Svc", "+a", "include/x"), "f", 3)


def test_split_lines() -> None:
    assert split_lines(b"a\r\nb\rc\nd", "f") == ["a", "b", "c", "d"]
    assert split_lines("a\n\n", "f") == ["a", ""]
    assert split_lines("a\x0bb\x85c\n".encode(), "f") == ["a\x0bb\x85c"]
    with pytest.raises(PolicySyntaxError) as info:
        split_lines(b"ok\r\nok\n\xff\n", "f")
    assert str(info.value) == "f:3: invalid UTF-8 text"


def test_serialise() -> None:
    rule = parse_line("s +a work vault allow autostart=no notify=yes user=u target=dom0", "f", 1)
    assert str(rule) == "s\t+a\twork\tvault\tallow target=dom0 user=u notify=yes autostart=no"
