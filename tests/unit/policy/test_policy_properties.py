"""Property tests: the parsers raise nothing but their own error type, and rules round-trip."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from pyqrexec.policy.errors import AccessDenied, PolicySyntaxError
from pyqrexec.policy.legacy import translate_line
from pyqrexec.policy.loaders import MemoryFiles, load_policy
from pyqrexec.policy.parser import Policy, Rule, parse_line, split_lines
from pyqrexec.policy.wire import RequestError, parse_eval_body, parse_eval_header, parse_request

WORDS = [
    "*", "+", "+a", "+a+b", "@anyvm", "@adminvm", "@default", "@dispvm", "@dispvm:", "@dispvm:x",
    "@dispvm:@tag:", "@dispvm:@tag:t", "@dispvm:@x", "@tag:", "@tag:t", "@type:", "@type:AppVM",
    "@foo", "dom0", "uuid:00000000-0000-0000-0000-000000000000", "uuid:1", "work", "vault",
    "test.Svc", "a+b", "allow", "deny", "ask", "x", "", "!include", "!include-dir",
    "!include-service", "!compat-4.0", "#", "$anyvm", "anyvm", "dispvm", "$include:x",
]  # fmt: skip
PARAMS = ["target", "default_target", "user", "notify", "autostart", "foo", ""]
word = st.one_of(st.sampled_from(WORDS), st.text(max_size=8))
param = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(PARAMS), word) | word
line = st.builds(
    lambda ws, ps, sep: sep.join(ws + ps),
    st.lists(word, max_size=6),
    st.lists(param, max_size=4),
    st.sampled_from([" ", "\t", " \t ", ","]),
)


def raises_only(error: type[Exception], parse: Callable[..., object], *args: object) -> None:
    """Call `parse`; any exception other than `error` fails the test."""
    try:
        parse(*args)
    except error:
        pass


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_syntax_errors(data: bytes) -> None:
    try:
        lines = split_lines(data, "f")
    except PolicySyntaxError:
        return
    for number, text in enumerate(lines, 1):
        raises_only(PolicySyntaxError, parse_line, text, "f", number)
        raises_only(PolicySyntaxError, translate_line, text, "f", number, "svc", "*")


@given(line)
def test_structured_lines_raise_only_syntax_errors(text: str) -> None:
    raises_only(PolicySyntaxError, parse_line, text, "f", 1)
    raises_only(PolicySyntaxError, translate_line, text, "f", 1, "svc", "+a")


@settings(max_examples=200)
@given(
    st.lists(st.one_of(line, st.binary(max_size=40).map(lambda b: b.decode("latin-1"))), max_size=5)
)
def test_whole_policies_fail_closed(lines: list[str]) -> None:
    """Loading arbitrary files (with includes and compat) raises only `AccessDenied`."""
    text = "\n".join(lines)
    files = MemoryFiles(
        {"/p/a.policy": text, "/p/include/x": text, "/legacy/svc+a": text},
        dirs=["/p"],
    )
    raises_only(AccessDenied, load_policy, files, ["/p"], "/legacy")


@given(line)
def test_rules_round_trip(text: str) -> None:
    try:
        rule = parse_line(text, "f", 1)
    except PolicySyntaxError:
        return
    if isinstance(rule, Rule):
        again = parse_line(str(rule), "g", 2)
        assert again == rule
        assert str(again) == str(rule)


request_line = st.builds(
    lambda k, v: f"{k}={v}",
    st.sampled_from(["source", "intended_target", "service_and_arg", "requested_source",
                     "just_evaluate", "assume_yes_for_ask", "domain_id", ""]),
    st.sampled_from(["", "work", "yes", "no", "x=y", "\xff", "\0"]),
)  # fmt: skip


@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(request_line).map(lambda ls: "\n".join(ls).encode("utf-8")),
    )
)
def test_requests_raise_only_request_errors(data: bytes) -> None:
    raises_only(RequestError, parse_request, data)
    raises_only(RequestError, parse_eval_header, data, "policy.EvalSimple")
    raises_only(RequestError, parse_eval_body, data)


SERVICES = ["*", "a.S", "b.S", "c.S"]
index_rule = st.builds(
    lambda svc, arg: f"{svc} {arg if svc != '*' else '*'} @anyvm @anyvm allow",
    st.sampled_from(SERVICES),
    st.sampled_from(["*", "+x"]),
)


@settings(max_examples=200)
@given(st.lists(index_rule, max_size=30), st.sampled_from([*SERVICES[1:], "other.S"]))
def test_rule_index_matches_linear_scan(lines: list[str], service: str) -> None:
    """The service index yields exactly the rules a scan of all rules would, in order."""
    rules = [parse_line(text, "f", n) for n, text in enumerate(lines, 1)]
    policy = Policy([r for r in rules if isinstance(r, Rule)])
    linear = [r for r in policy.rules if r.service in ("*", service)]
    found = policy.rules_for(service)
    assert [(r.file, r.line) for r in found] == [(r.file, r.line) for r in linear]
