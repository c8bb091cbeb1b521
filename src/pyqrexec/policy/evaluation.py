"""Evaluation of one request (docs/reference/policy.md#evaluation,
docs/reference/policy.md#answer-lines): data in, a decision as data out.

`Evaluation.run()` returns an `Outcome`: either final (allowed or denied, with answer lines, log
lines and notifications to send) or waiting for the user (`outcome.ask` set), in which case the
caller shows the dialog and passes the reply to `Evaluation.resolve_ask()`. Nothing here blocks,
so a daemon can keep serving other requests while a dialog is open.

Size: one request's evaluation is one object whose steps share its state (the request, the
matched rule, the log and notifications so far); split into modules, the numbered steps of
docs/reference/policy.md#evaluation would no longer read in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .dialogs import AskRequest, Notification, icons
from .errors import AccessDenied, PolicySyntaxError
from .parser import ActionType, Policy, Rule
from .system_info import Domain, SystemInfo
from .tokens import (
    ADMIN_FORMS,
    Column,
    Kind,
    Token,
    UndecidableDispVM,
    expand,
    matches_source,
    matches_target,
    parse_token,
)

__all__ = ["Request", "Outcome", "Evaluation", "split_service"]


@dataclass(frozen=True, slots=True)
class Request:
    source: str
    intended_target: str
    service_and_arg: str
    requested_source: str = ""
    assume_yes_for_ask: bool = False
    just_evaluate: bool = False


@dataclass
class Outcome:
    """A decision, or a pending ask (`ask` set, `allowed` False, no answer yet)."""

    allowed: bool
    lines: list[str]
    rule: Rule | None = None
    reason: str = ""
    ask: AskRequest | None = None
    log: list[tuple[str, str]] = field(default_factory=list)  # (level, text)
    notifications: list[Notification] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return "\n".join(self.lines)


class _Deny(Exception):
    def __init__(self, reason: str, notify: bool, label: str = "denied: ") -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = notify
        self.label = label


def split_service(service_and_arg: str) -> tuple[str, str]:
    """`SERVICE+ARG` → (`SERVICE`, `+ARG`); no `+` means the empty argument `+`."""
    service, _, arg = service_and_arg.partition("+")
    return service, "+" + arg


def _same(a: Domain | None, b: Domain | None) -> bool:
    return a is not None and a is b


class Evaluation:
    """One request against one policy and one system-info snapshot."""

    def __init__(self, request: Request, info: SystemInfo, policy: Policy | AccessDenied) -> None:
        self.request = request
        self.info = info
        self.policy = policy
        self.service, self.argument = split_service(request.service_and_arg)
        self.source = request.source  # the effective source after step 5
        self.source_domain = info.get(request.source)
        self.req = ""
        self.rule: Rule | None = None
        self.candidates: tuple[str, ...] = ()
        self.considered: list[tuple[Rule, str]] = []  # rules passed over, for --explain
        self._log: list[tuple[str, str]] = []
        self._notifications: list[Notification] = []

    # -- outcomes ------------------------------------------------------------------------

    def _outcome(self, allowed: bool, lines: list[str], reason: str = "") -> Outcome:
        out = Outcome(allowed, lines, self.rule, reason, None, self._log, self._notifications)
        self._log, self._notifications = [], []
        return out

    def _denied(self, deny: _Deny) -> Outcome:
        """Step 10: log with the original source and target, notify when it applies."""
        r = self.request
        self._log.append(
            (
                "info",
                f"qrexec: {r.service_and_arg}: {r.source} -> {r.intended_target}: "
                f"{deny.label}{deny.reason}",
            )
        )
        original = self.info.get(r.source)
        if deny.notify and not r.just_evaluate and original is not None and original.guivm:
            self._notifications.append(
                Notification(
                    original.guivm, "deny", self.service, self.argument, r.source, r.intended_target
                )
            )
        return self._outcome(False, ["result=deny"], deny.reason)

    # -- the algorithm -------------------------------------------------------------------

    def run(self) -> Outcome:
        try:
            return self._run()
        except _Deny as deny:
            return self._denied(deny)

    def _run(self) -> Outcome:
        if isinstance(self.policy, PolicySyntaxError):
            raise _Deny(str(self.policy), False, "error loading policy: ")
        if isinstance(self.policy, AccessDenied):
            raise _Deny(self.policy.reason, self.policy.notify)
        self.req = self._verify_request()
        self._requested_source()
        rule = self.rule = self._find_rule(self.policy)
        action = rule.action
        if action.type is ActionType.DENY:
            raise _Deny(f"denied by policy {rule.where}", action.notifies)
        if action.type is ActionType.ALLOW:
            return self._allow(rule)
        return self._ask(self.policy, rule)

    def applicable_rule(self) -> Rule | None:
        """Steps 4 and 6–9.5 alone, for tools that map the policy (qrexec-policy-graph).

        The allow or ask rule that would handle the request, or None when it would be denied.
        No dialog, notification, log line or loopback check; an ask counts even when the
        requested target is not among its candidates.
        """
        policy = self.policy
        if isinstance(policy, AccessDenied):
            return None
        try:
            self.req = self._verify_request()
            rule = self.rule = self._find_rule(policy)
            if rule.action.type is ActionType.ALLOW:
                self._allowed_target(rule)
            elif rule.action.type is ActionType.ASK:
                self._ask_choices(policy, rule)
            else:
                return None
        except _Deny:
            return None
        finally:
            self._log, self._notifications = [], []
        return rule

    def _verify(self, text: str, token: Token) -> str:
        """Step 4 for a parsed REQ or RDR token: unknown qubes become `@default`."""
        if token.kind is Kind.LITERAL and text not in self.info:
            self._log.append(
                ("warning", f"qrexec: target {text!r} does not exist, using @default instead")
            )
            return "@default"
        if token.kind is Kind.DISPVM_TEMPLATE:
            d = self.info.get(token.value)
            if d is None or not d.template_for_dispvms:
                raise _Deny(f"not a template for dispvm: {token.value}", True)
        return text

    def _verify_request(self) -> str:
        text = self.request.intended_target or "@default"
        try:
            token = parse_token(text, Column.REQUEST, None, 0)
        except PolicySyntaxError as err:
            raise _Deny(str(err), False, "error loading policy: ") from None
        return self._verify(text, token)

    def _requested_source(self) -> None:
        """Step 5: a relay may speak for the RemoteVM it relays."""
        r = self.request
        name = r.requested_source
        if not name:
            return
        d = self.info.domains.get(name)
        if d is None:
            raise _Deny(f"unknown requested source qube {name!r}", True)
        if d.type != "RemoteVM":
            raise _Deny(f"{name}: requested source is only authorized for RemoteVM", True)
        if d.relayvm != r.source:
            raise _Deny(f"{r.source} is not a relay for {name}", True)
        self.source, self.source_domain = name, d

    def _find_rule(self, policy: Policy) -> Rule:
        for rule in policy.rules_for(self.service):
            if rule.argument != "*" and rule.argument != self.argument:
                continue
            if not matches_source(rule.source, self.source, self.info):
                self.considered.append((rule, "source does not match"))
                continue
            try:
                found = matches_target(rule.target, self.req, self.source_domain, self.info)
            except UndecidableDispVM:
                raise _Deny(
                    f"{rule.target} at {rule.where} cannot be compared with @dispvm: "
                    f"{self.source} has no default_dispvm",
                    False,
                ) from None
            if found:
                return rule
            self.considered.append((rule, "target does not match"))
        raise _Deny("no matching rule found", True)

    def _default_dispvm(self) -> str | None:
        d = self.source_domain
        return None if d is None or d.default_dispvm is None else "@dispvm:" + d.default_dispvm

    def _is_running(self, target: str) -> bool:
        """Step 8.5: whether `target` is usable without starting anything."""
        if target in ADMIN_FORMS:
            return True
        if target.startswith("@"):
            return False
        d = self.info.get(target)
        return d is not None and d.is_running

    def _allow(self, rule: Rule) -> Outcome:
        return self._grant(self._allowed_target(rule))

    def _allowed_target(self, rule: Rule) -> str:
        """Steps 8.1–8.5: where an allow rule sends this request."""
        action = rule.action
        target = self.req
        if action.target is not None:
            target = self._verify(action.target.text, action.target)
        if target == "@default":
            raise _Deny(
                f"policy define 'allow' action at {rule.where} but no target is specified "
                "by caller or policy",
                True,
            )
        if target == "@dispvm":
            dispvm = self._default_dispvm()
            if dispvm is None:
                raise _Deny(
                    f"policy define 'allow' action to @dispvm at {rule.where} but no DispVM "
                    "base is set for this VM",
                    True,
                )
            target = dispvm
        elif target == "@adminvm":
            target = "dom0"
        if not action.autostarts and not self._is_running(target):
            raise _Deny(
                f"target {target} is denied because it would require autostart", action.notifies
            )
        return target

    def _grant(self, target: str) -> Outcome:
        """Steps 8.6–8.7 and the answer lines of docs/reference/policy.md#answer-lines."""
        rule = self.rule
        assert rule is not None
        if self.request.just_evaluate:
            return self._outcome(True, ["result=allow"])
        admin = target in ADMIN_FORMS
        disp = target.startswith("@dispvm:")
        domain = self._granted_domain(target, admin, disp)
        r = self.request
        self._note_allowed(target, rule.action.notifies)
        user = rule.action.user or "DEFAULT"
        autostart = str(rule.action.autostarts)
        extra = [f"policy_source={self.source}"] if r.requested_source else []
        if admin:
            # a RemoteVM's call keeps its name in dom0 too (docs/remote.md): the dom0
            # service must not take the relay for the caller
            lines = ["target=dom0"]
        elif disp:
            assert domain is not None
            lines = [f"target={target}", f"target_uuid=@dispvm:uuid:{domain.uuid}"]
        else:
            assert domain is not None
            if domain.type == "RemoteVM":
                return self._remote(domain, autostart, extra)
            lines = [f"target={target}", f"target_uuid=uuid:{domain.uuid}"]
        lines = [
            f"user={user}",
            "result=allow",
            *lines,
            f"autostart={autostart}",
            f"requested_target={self.req}",
            *extra,
        ]
        return self._outcome(True, lines)

    def _granted_domain(self, target: str, admin: bool, disp: bool) -> Domain | None:
        """The domain `target` names (None for dom0), refused if it is missing or the caller."""
        domain = None if admin else self.info.get(target[len("@dispvm:") :] if disp else target)
        if not admin and domain is None:
            raise _Deny(f"target {target} does not exist", False)
        if not disp and (
            target == self.source
            or (admin and self.source in ADMIN_FORMS)
            or _same(domain, self.source_domain)
        ):
            raise _Deny("loopback qrexec connection not supported", True)
        return domain

    def _note_allowed(self, target: str, notifies: bool) -> None:
        self._log.append(
            (
                "info",
                f"qrexec: {self.service}{self.argument}: {self.source} -> {self.req}: "
                f"allowed to {target}",
            )
        )
        guivm = self._guivm(self.source_domain)
        if notifies and guivm:
            self._notifications.append(
                Notification(guivm, "allow", self.service, self.argument, self.source, target)
            )

    def _guivm(self, source: Domain | None) -> str | None:
        """Where the source's dialogs and notifications go: its GuiVM, or for a RemoteVM
        without one its relay's, whose user is the one the call goes through
        (docs/remote.md)."""
        if source is None:
            return None
        if source.guivm or source.type != "RemoteVM" or not source.relayvm:
            return source.guivm
        relay = self.info.domains.get(source.relayvm)
        return relay.guivm if relay is not None else None

    def _remote(self, domain: Domain, autostart: str, extra: list[str]) -> Outcome:
        """A RemoteVM target is reached through its relay
        (docs/reference/policy.md#answer-lines)."""
        if not domain.relayvm:
            raise _Deny(f"{domain.name}: relayvm is not set", True)
        if not domain.transport_rpc:
            raise _Deny(f"{domain.name}: transport RPC is not set", True)
        relay = self.info.domains.get(domain.relayvm)
        if relay is None:
            raise _Deny(f"{domain.name}: relayvm {domain.relayvm} does not exist", True)
        assert self.rule is not None
        if self.rule.action.user is not None:
            self._log.append(
                (
                    "warning",
                    "Ignoring user directive in policy. This is not supported in the "
                    "case of RemoveVM.",
                )
            )
        # the resolved target, not the caller's request: after a redirect or an ask choice
        # the request may name @default or another qube (docs/remote.md)
        service = f"{domain.transport_rpc}+{domain.name}+{self.service}{self.argument}"
        lines = [
            "user=DEFAULT",
            "result=allow",
            f"target={relay.name}",
            f"target_uuid=uuid:{relay.uuid}",
            f"autostart={autostart}",
            f"requested_target={self.req}",
            f"service={service}",
            *extra,
        ]
        return self._outcome(True, lines)

    # -- ask -----------------------------------------------------------------------------

    def _normalise(self, target: str) -> str | None:
        if target == "@dispvm":
            return self._default_dispvm()
        return "dom0" if target in ADMIN_FORMS else target

    def _computed_candidates(self, policy: Policy) -> set[str]:
        """Step 9.1–9.2 without `target=`: what the matching rules allow, later ones first."""
        found: set[str] = set()
        for rule in reversed(policy.rules_for(self.service)):
            if rule.argument != "*" and rule.argument != self.argument:
                continue
            if not matches_source(rule.source, self.source, self.info):
                continue
            action = rule.action
            token = action.target if action.target is not None else rule.target
            expansion = set(expand(token, self.info))
            if action.type is ActionType.DENY:
                found -= expansion
            else:
                found |= expansion
        out: set[str] = set()
        source = self.source_domain
        for candidate in found:
            normal = self._normalise(candidate)
            if normal is None or normal == self.source:
                continue
            d = self.info.get(
                normal[len("@dispvm:") :] if normal.startswith("@dispvm:") else normal
            )
            if d is not None and (d.internal or (not normal.startswith("@") and _same(d, source))):
                continue
            out.add(normal)
        return out

    def _ask(self, policy: Policy, rule: Rule) -> Outcome:
        default = self._ask_choices(policy, rule)
        r = self.request
        if r.assume_yes_for_ask:
            return self._choose(self.req)
        if r.just_evaluate:
            return self._outcome(False, ["result=deny"], "ask without a user")
        action = rule.action
        guivm = self._guivm(self.source_domain)
        if not guivm:
            self._log.append(
                (
                    "warning",
                    f"{self.service} not allowed from {self.source}: the resolution was "
                    '"ask", but source domain has no GuiVM',
                )
            )
            raise _Deny(f"denied by the user {rule.where}", action.notifies)
        ask = AskRequest(
            guivm,
            self.source,
            self.service,
            self.argument,
            self.candidates,
            default,
            icons(self.info),
        )
        out = self._outcome(False, [])
        out.ask = ask
        return out

    def _ask_choices(self, policy: Policy, rule: Rule) -> str:
        """Steps 9.1–9.5: set the candidates; returns the default target ("" for none)."""
        action = rule.action
        if action.target is not None:
            single = self._normalise(action.target.text)
            candidates = [single] if single is not None else []
        else:
            candidates = sorted(self._computed_candidates(policy), key=lambda c: c.encode())
        if not action.autostarts:
            candidates = [c for c in candidates if self._is_running(c)]
        if not candidates:
            raise _Deny(
                f"policy define 'ask' action at {rule.where} but no target is available to "
                "choose from",
                True,
            )
        self.candidates = tuple(candidates)
        default = ""
        if action.default_target is not None:
            default = self._normalise(action.default_target.text) or ""
            if default not in self.candidates:
                self._log.append(
                    (
                        "warning",
                        f"warning: policy define default_target={action.default_target} "
                        f"at {rule.where} but it is not among allowed targets "
                        f"({', '.join(self.candidates)})",
                    )
                )
                default = ""
        return default

    def _choose(self, choice: str) -> Outcome:
        if choice not in self.candidates:
            raise _Deny(f"target {choice} is not a valid choice", True)
        return self._grant(choice)

    def resolve_ask(self, reply: str) -> Outcome:
        """Continue after the dialog: `reply` is the agent's answer (step 9.9)."""
        rule = self.rule
        assert rule is not None
        try:
            if reply == "deny":
                raise _Deny(f"denied by the user {rule.where}", rule.action.notifies)
            if reply.startswith("allow:"):
                return self._choose(reply[len("allow:") :])
            self._log.append(("warning", f"invalid ask response for {self.service}: {reply}"))
            raise _Deny("invalid response", True)
        except _Deny as deny:
            return self._denied(deny)

    def ask_failed(self, message: str) -> Outcome:
        """The dialog could not be shown (agent unreachable, failed call): deny."""
        assert self.rule is not None
        return self._denied(_Deny(f"policy.Ask failed: {message}", self.rule.action.notifies))

    @staticmethod
    def system_info_failed(request: Request, message: str) -> Outcome:
        """Step 1: no system info, no notification."""
        return Outcome(
            False,
            ["result=deny"],
            reason=message,
            log=[
                (
                    "info",
                    f"qrexec: {request.service_and_arg}: {request.source} -> "
                    f"{request.intended_target}: error getting system info: {message}",
                )
            ],
        )
