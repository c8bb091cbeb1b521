"""qrexec-policy-graph's pure part: which edges a policy draws
(docs/reference/cli.md#qrexec-policy-graph)."""

from __future__ import annotations

import json

import pytest

from pyqrexec.policy.evaluation import Evaluation, Request
from pyqrexec.policy.graph import (
    GraphOptions,
    option_error,
    render,
    requested_targets,
    service_pairs,
)
from pyqrexec.policy.loaders import MemoryFiles, load_policy
from pyqrexec.policy.parser import Policy
from pyqrexec.policy.system_info import SystemInfo

from .policy_helpers import FIXTURE

DIR = "/etc/qubes/policy.d"
INFO = SystemInfo.from_json(FIXTURE.read_bytes())
S71 = "test.Service * work personal allow\ntest.Service * sys-usb personal ask\n"


def policy(text: str) -> Policy:
    files = MemoryFiles({f"{DIR}/10-test.policy": text})
    return load_policy(files, [DIR], "/etc/qubes-rpc/policy").policy


def graph(text: str, info: SystemInfo = INFO, **options: object) -> list[str]:
    return render(policy(text), info, GraphOptions(**options))  # type: ignore[arg-type]


def edges(text: str, **options: object) -> list[str]:
    return [line for line in graph(text, **options) if " -> " in line]


RED = '"#cc0000"'


def test_s71_exact_output() -> None:
    assert graph(S71) == [
        "digraph g {",
        f'  "work" [color = {RED}, penwidth = 3];',
        f'  "personal" [color = {RED}, penwidth = 3];',
        '  "work" -> "personal" [label="test.Service" color=red];',
        "}",
    ]


def test_s71_include_ask() -> None:
    assert graph(S71, include_ask=True) == [
        "digraph g {",
        f'  "work" [color = {RED}, penwidth = 3];',
        f'  "personal" [color = {RED}, penwidth = 3];',
        '  "work" -> "personal" [label="test.Service" color=red];',
        f'  "sys-usb" [color = {RED}, penwidth = 3];',
        '  "sys-usb" -> "personal" [label="test.Service" color=orange];',
        "}",
    ]


def test_node_colour_from_label() -> None:
    doc = json.loads(FIXTURE.read_bytes())
    doc["domains"]["work"]["label"] = "0x73d216"
    info = SystemInfo.from_json(json.dumps(doc))
    assert '  "work" [color = "#73d216", penwidth = 3];' in graph(S71, info)


def test_requested_targets_order() -> None:
    doc = {"domains": {"b": {"template_for_dispvms": True}, "a": {}, "uuid:x": {}}}
    assert requested_targets(SystemInfo.from_json(json.dumps(doc))) == [
        "b", "a", "@dispvm", "@dispvm:b", "@default",
    ]  # fmt: skip


def test_keyword_targets_are_dotted_nodes() -> None:
    text = "test.D * work @dispvm allow\ntest.A * work @adminvm allow\n"
    lines = graph(text)
    assert '  "@dispvm" [style = dotted];' in lines
    assert '  "work" -> "@dispvm" [label="test.D" color=red];' in lines
    # @adminvm is not among the requested targets; dom0 is, and matches the @adminvm rule
    assert '  "work" -> "dom0" [label="test.A" color=red];' in lines
    assert not any('"@adminvm"' in line for line in lines)


def test_shown_target_is_the_redirect() -> None:
    assert edges("test.Svc * work @default allow target=vault\n") == [
        '  "work" -> "vault" [label="test.Svc" color=red];'
    ]


def test_denials_are_skipped() -> None:
    # an ask with no candidate, autostart=no to a halted qube, an explicit deny, @dispvm for
    # a qube without default_dispvm; only the running sys-usb is reachable
    text = (
        "test.A * work @default ask autostart=no\n"
        "test.B * work vault allow autostart=no\n"
        "test.C * work personal deny\n"
        "test.D * sys-usb @dispvm allow\n"
        "test.E * work sys-usb allow autostart=no\n"
    )
    assert edges(text, include_ask=True) == ['  "work" -> "sys-usb" [label="test.E" color=red];']


def test_loopback_edge_appears() -> None:
    assert edges("test.Svc * work work allow\n") == [
        '  "work" -> "work" [label="test.Svc" color=red];'
    ]


def test_ask_counts_even_if_target_is_not_a_candidate() -> None:
    # the only candidate is vault, yet the request for personal is an ask edge
    text = "test.Svc * work personal ask target=vault\n"
    assert edges(text, include_ask=True) == ['  "work" -> "vault" [label="test.Svc" color=orange];']


def test_full_output_labels() -> None:
    text = (
        "test.Svc +arg work vault allow target=vault user=root notify=yes autostart=yes\n"
        "test.Svc * work personal ask default_target=personal user=u notify=no\n"
    )
    # the pair (test.Svc, *) comes first; ask edges are drawn without --include-ask
    assert edges(text, full_output=True) == [
        '  "work" -> "personal" [label="test.Svc ask default_target=personal user=u" '
        "color=orange];",
        '  "work" -> "vault" [label="test.Svc+arg allow target=vault user=root" color=red];',
    ]
    assert edges(text, full_output=True, skip_labels=True) == [
        '  "work" -> "personal" [label=" ask default_target=personal user=u" color=orange];',
        '  "work" -> "vault" [label=" allow target=vault user=root" color=red];',
    ]


def test_skip_labels_collapses_duplicates() -> None:
    text = "test.A * work vault allow\ntest.B * work vault allow\n"
    assert edges(text, skip_labels=True) == ['  "work" -> "vault" [label="" color=red];']


def test_sources_in_command_line_order() -> None:
    text = "test.Svc * @anyvm vault allow\n"
    assert edges(text, sources=["personal", "work"]) == [
        '  "personal" -> "vault" [label="test.Svc" color=red];',
        '  "work" -> "vault" [label="test.Svc" color=red];',
    ]
    # a keyword source is evaluated as written: only rules whose SRC matches it
    assert '  "@anyvm" [style = dotted];' in graph(text, sources=["@anyvm"])


def test_target_filter() -> None:
    text = "test.Svc * work @anyvm allow\n"
    assert edges(text, targets=["vault", "@dispvm"]) == [
        '  "work" -> "vault" [label="test.Svc" color=red];',
        '  "work" -> "@dispvm" [label="test.Svc" color=red];',
    ]


def test_wildcard_service_rules_are_labelled_none() -> None:
    text = "* * work vault allow\ntest.Svc +a personal vault allow\n"
    assert edges(text) == [
        '  "work" -> "vault" [label="None" color=red];',
        '  "work" -> "vault" [label="test.Svc" color=red];',
        '  "personal" -> "vault" [label="test.Svc" color=red];',
    ]


def test_service_filter() -> None:
    text = "* * work vault allow\ntest.Svc +a personal vault allow\ntest.B * work vault allow\n"
    # the wildcard pair is skipped (upstream crashes); the wildcard rule applies to test.Svc
    assert edges(text, services=["test.Svc"]) == [
        '  "work" -> "vault" [label="test.Svc" color=red];',
        '  "personal" -> "vault" [label="test.Svc" color=red];',
    ]
    # a service named only by the option is evaluated through the wildcard rule
    assert edges(text, services=["test.New"]) == [
        '  "work" -> "vault" [label="test.New" color=red];'
    ]
    assert edges(text, services=["test.Svc+b"]) == [
        '  "work" -> "vault" [label="test.Svc" color=red];'
    ]


def test_service_pairs_sorted_with_wildcard_first() -> None:
    pol = policy("b.S +x a b allow\nb.S * a b allow\n* * a b deny\na.S +y a b allow\n")
    assert service_pairs(pol, []) == [("*", "*"), ("a.S", "+y"), ("b.S", "*"), ("b.S", "+x")]
    assert service_pairs(pol, ["b.S+x", "c.S"]) == [("b.S", "+x"), ("c.S", "*")]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (GraphOptions(sources=["work", "@dispvm"]), "--source @dispvm is not a valid call source"),
        (GraphOptions(sources=["@default"]), "--source @default is not a valid call source"),
        (GraphOptions(targets=["@anyvm"]), "--target @anyvm is not a valid actual call target"),
        (GraphOptions(targets=["*"]), "--target * is not a valid actual call target"),
        (GraphOptions(services=["a b"]), "--service a b is not a valid service"),
        (GraphOptions(services=["a+b/c"]), "--service a+b/c is not a valid service"),
        (GraphOptions(sources=["@anyvm", "*"], targets=["@dispvm:x", "dom0"]), None),
    ],
)
def test_option_errors(options: GraphOptions, message: str | None) -> None:
    assert option_error(options) == message


def test_applicable_rule_has_no_side_effects() -> None:
    pol = policy("test.Svc * work @anyvm ask\ntest.Svc * work vault deny\n")
    evaluation = Evaluation(Request("work", "personal", "test.Svc"), INFO, pol)
    rule = evaluation.applicable_rule()
    assert rule is not None and rule.line == 1
    out = evaluation.run()  # the same evaluation still answers normally afterwards
    assert out.ask is not None and not out.log and not out.notifications
    denied = Evaluation(Request("work", "@anyvm", "test.Svc"), INFO, pol)
    assert denied.applicable_rule() is None
