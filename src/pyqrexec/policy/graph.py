"""The picture qrexec-policy-graph draws of a policy (docs/reference/cli.md#qrexec-policy-graph).

`render()` asks the evaluator, for every service named in the rules, every source and every
requested target, which allow or ask rule would handle the call
(docs/reference/policy.md#evaluation steps 4 and 6–9.5: no dialog, no loopback check) and
returns the lines of a Graphviz digraph: one edge per call that is not denied, its two nodes
coloured after the qubes' labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import PolicySyntaxError
from .evaluation import Evaluation, Request
from .parser import ActionType, Policy, Rule, check_service_argument
from .system_info import Domain, SystemInfo
from .tokens import Column, parse_token

__all__ = ["GraphOptions", "option_error", "requested_targets", "service_pairs", "render"]

HEADER = "digraph g {"
FOOTER = "}"


@dataclass(frozen=True)
class GraphOptions:
    """The command-line choices; an empty sequence means "no restriction"."""

    include_ask: bool = False
    sources: Sequence[str] = ()
    targets: Sequence[str] = ()
    services: Sequence[str] = ()  # SVC or SVC+ARG
    skip_labels: bool = False
    full_output: bool = False


def _split_service(text: str) -> tuple[str, str]:
    """`SVC` → (SVC, `*`); `SVC+ARG` → (SVC, `+ARG`)."""
    service, plus, arg = text.partition("+")
    return service, "+" + arg if plus else "*"


def option_error(options: GraphOptions) -> str | None:
    """The message for the first invalid `--source`, `--target` or `--service` value."""
    for source in options.sources:
        try:
            parse_token(source, Column.SOURCE, None, 0)
        except PolicySyntaxError:
            return f"--source {source} is not a valid call source"
    for target in options.targets:
        try:
            parse_token(target, Column.REDIRECT, None, 0)
        except PolicySyntaxError:
            return f"--target {target} is not a valid actual call target"
    for text in options.services:
        try:
            check_service_argument(*_split_service(text), None, 0)
        except PolicySyntaxError:
            return f"--service {text} is not a valid service"
    return None


def _qubes(info: SystemInfo) -> list[Domain]:
    # System info may carry `uuid:` alias keys; they are not qubes of their own.
    return [d for d in info if not d.name.startswith("uuid")]


def requested_targets(info: SystemInfo) -> list[str]:
    """Every qube, `@dispvm`, `@dispvm:N` for each disposable template, and `@default`."""
    qubes = _qubes(info)
    return [
        *(d.name for d in qubes),
        "@dispvm",
        *("@dispvm:" + d.name for d in qubes if d.template_for_dispvms),
        "@default",
    ]


def _no_wildcard(part: str) -> str:
    return "" if part == "*" else part


def service_pairs(policy: Policy, services: Sequence[str]) -> list[tuple[str, str]]:
    """The (service, argument) pairs to evaluate, sorted, `*` sorting as if empty.

    With `services` given, only pairs it names (`SVC` or `SVC+ARG`) are kept, and pairs of
    `*`-service rules are left out (upstream Qubes crashes on them).
    """
    pairs = {(rule.service, rule.argument) for rule in policy.rules}
    pairs.update(_split_service(text) for text in services)
    wanted = set(services)
    kept = [
        (service, argument)
        for service, argument in pairs
        if not wanted
        or (service != "*" and (service in wanted or service + _no_wildcard(argument) in wanted))
    ]
    return sorted(kept, key=lambda pair: (_no_wildcard(pair[0]), _no_wildcard(pair[1])))


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _node(name: str, info: SystemInfo) -> str:
    if name.startswith("@") or name == "*":
        return f"  {_quoted(name)} [style = dotted];"
    domain = info.get(name)
    if domain is None or not domain.label:
        # A target= naming no qube, or a --source that is not one: drawn, but uncoloured.
        return f"  {_quoted(name)} [penwidth = 3];"
    return f'  {_quoted(name)} [color = "{domain.label.replace("0x", "#")}", penwidth = 3];'


def _edge(options: GraphOptions, service: str, rule: Rule, source: str, target: str) -> str | None:
    ask = rule.action.type is ActionType.ASK
    if ask and not (options.include_ask or options.full_output):
        return None
    label = "" if options.skip_labels else ("None" if service == "*" else service)
    if options.full_output:
        if not options.skip_labels and rule.argument != "*":
            label += rule.argument
        label += " " + rule.action.without_flags()
    color = "orange" if ask else "red"
    return f"  {_quoted(source)} -> {_quoted(target)} [label={_quoted(label)} color={color}];"


def _unique(lines: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def render(policy: Policy, info: SystemInfo, options: GraphOptions) -> list[str]:
    """The digraph's lines (without newlines), each distinct line once, in first-seen order."""
    targets = requested_targets(info)
    sources = list(options.sources) or [d.name for d in _qubes(info)]
    lines = [HEADER]
    for service, argument in service_pairs(policy, options.services):
        # A `*` pair is a call without a service: only `*`-service rules match it.
        call = service + _no_wildcard(argument)
        for source in sources:
            for requested in targets:
                evaluation = Evaluation(
                    Request(source, requested, call, just_evaluate=True), info, policy
                )
                rule = evaluation.applicable_rule()
                if rule is None:
                    continue
                redirect = rule.action.target
                shown = redirect.text if redirect is not None else evaluation.req
                if options.targets and shown not in options.targets:
                    continue
                edge = _edge(options, service, rule, source, shown)
                if edge is not None:
                    lines += [_node(source, info), _node(shown, info), edge]
    lines.append(FOOTER)
    return _unique(lines)
