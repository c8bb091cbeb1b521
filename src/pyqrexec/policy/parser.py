"""The `policy.d` line grammar (docs/reference/policy.md#rule-syntax,
docs/reference/policy.md#actions-and-parameters): text in, `Rule` or `Directive` out.

Parsing is separate from where text comes from: `loaders.py` reads files and follows
directives; `qubes-policy-lint` feeds single lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from .errors import PolicySyntaxError
from .tokens import Column, Kind, Token, parse_token

__all__ = [
    "ActionType",
    "Action",
    "Rule",
    "Directive",
    "Policy",
    "parse_line",
    "parse_rule_fields",
    "check_service_argument",
    "split_lines",
]

_SERVICE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_ARGUMENT_CHARS = _SERVICE_CHARS | {"+"}


class ActionType(Enum):
    ALLOW = "allow"
    DENY = "deny"
    ASK = "ask"

    @property
    def class_name(self) -> str:
        """The name used in `invalid parameters for action X` (upstream's class names)."""
        return self.value.capitalize()


# Parameters each action accepts, in the order they are written back.
_PARAMS: dict[ActionType, tuple[str, ...]] = {
    ActionType.DENY: ("notify",),
    ActionType.ALLOW: ("target", "user", "notify", "autostart"),
    ActionType.ASK: ("target", "default_target", "user", "notify", "autostart"),
}
_PARAM_ORDER = ("target", "default_target", "user", "notify", "autostart")
_SHOWN = frozenset({"target", "default_target", "user"})


@dataclass(frozen=True, slots=True)
class Action:
    """An action with its parameters as written (`None` = not given, use the default)."""

    type: ActionType
    target: Token | None = None
    default_target: Token | None = None
    user: str | None = None
    notify: bool | None = None
    autostart: bool | None = None

    @property
    def notifies(self) -> bool:
        """Effective `notify`: `yes` by default for deny, `no` for allow and ask."""
        return self.notify if self.notify is not None else self.type is ActionType.DENY

    @property
    def autostarts(self) -> bool:
        return self.autostart is not False

    def params_text(self) -> list[str]:
        values = {
            "target": self.target and self.target.text,
            "default_target": self.default_target and self.default_target.text,
            "user": self.user,
            "notify": None if self.notify is None else ("yes" if self.notify else "no"),
            "autostart": None if self.autostart is None else ("yes" if self.autostart else "no"),
        }
        return [f"{key}={values[key]}" for key in _PARAM_ORDER if values[key] is not None]

    def __str__(self) -> str:
        return " ".join([self.type.value, *self.params_text()])

    def without_flags(self) -> str:
        """The action as upstream's policy tools write it: `notify=`/`autostart=` left out."""
        return " ".join(
            [self.type.value, *(p for p in self.params_text() if p.split("=")[0] in _SHOWN)]
        )


@dataclass(frozen=True, slots=True)
class Rule:
    service: str  # "*" or a service name
    argument: str  # "*" or "+…"
    source: Token
    target: Token
    action: Action
    file: str = field(default="<unknown>", compare=False)
    line: int | None = field(default=None, compare=False)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def _columns(self, action: str) -> str:
        return f"{self.service}\t{self.argument}\t{self.source}\t{self.target}\t{action}"

    def __str__(self) -> str:
        return self._columns(str(self.action))

    def without_flags(self) -> str:
        """The rule as qrexec-legacy-convert writes it (see `Action.without_flags`)."""
        return self._columns(self.action.without_flags())


@dataclass(frozen=True, slots=True)
class Directive:
    """`!include`, `!include-dir`, `!include-service` or `!compat-4.0` with its parameters."""

    name: str
    params: tuple[str, ...]
    file: str
    line: int


class Policy:
    """The parsed policy: every rule in order, indexed by service for evaluation.

    The index is built once: for each service named in a rule, its rules and the `*` rules
    merged in policy order; any other service gets the `*` rules alone. A request scans only the
    rules that can match its service, first match first as in the linear scan.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._wildcard: list[Rule] = []
        self._by_service: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if rule.service == "*":
                self._wildcard.append(rule)
                for found in self._by_service.values():
                    found.append(rule)
            elif rule.service in self._by_service:
                self._by_service[rule.service].append(rule)
            else:
                self._by_service[rule.service] = [*self._wildcard, rule]

    def rules_for(self, service: str) -> Sequence[Rule]:
        """The rules whose service is `service` or `*`, in policy order."""
        return self._by_service.get(service, self._wildcard)


def _invalid_chars(text: str, allowed: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(set(text) - allowed))


def check_service_argument(service: str, argument: str, file: str | None, line: int, *,
                           empty_service: bool = False) -> None:
    """Validate the SERVICE and ARGUMENT columns (also of `!include-service`).

    `empty_service`: the service may be "" (a legacy file named `+ARG`, docs/policy-engine.md).
    """
    bad = _invalid_chars(service, _SERVICE_CHARS) if service != "*" else ()
    if bad or not (service or empty_service):
        raise PolicySyntaxError(
            file, line, f"service {service!r} contains invalid characters: {bad!r}"
        )
    if argument != "*":
        bad = _invalid_chars(argument, _ARGUMENT_CHARS)
        if bad:
            raise PolicySyntaxError(
                file, line, f"argument {argument!r} contains invalid characters: {bad!r}"
            )
        if not argument.startswith("+"):
            raise PolicySyntaxError(file, line, f"argument {argument!r} does not start with +")
        if service == "*":
            raise PolicySyntaxError(file, line, "only * argument allowed for * service")


def _yes_no(key: str, value: str | None, file: str | None, line: int) -> bool | None:
    if value is None:
        return None
    if value not in ("yes", "no"):
        raise PolicySyntaxError(file, line, f"{key!r} is {value!r}, but can be only 'yes' or 'no'")
    return value == "yes"


def _redirect(value: str | None, file: str | None, line: int) -> Token | None:
    if value is None:
        return None
    if not value:
        raise PolicySyntaxError(file, line, "invalid empty redirect token")
    return parse_token(value, Column.REDIRECT, file, line)


def parse_action(
    word: str, params: Sequence[str], target: Token, file: str | None, line: int
) -> Action:
    """Parse ACTION and its `key=value` parameters, in the check order of
    docs/reference/policy.md#rule-syntax."""
    try:
        action = ActionType(word)
    except ValueError:
        raise PolicySyntaxError(file, line, f"invalid action: {word}") from None
    given: dict[str, str] = {}
    for param in params:
        key, sep, value = param.partition("=")
        if not sep:
            raise PolicySyntaxError(file, line, f"invalid action parameter syntax: {param!r}")
        if key in given:
            raise PolicySyntaxError(file, line, f"parameter given twice: {key!r}")
        given[key] = value
    notify = _yes_no("notify", given.get("notify"), file, line)
    autostart = _yes_no("autostart", given.get("autostart"), file, line)
    if not set(given) <= set(_PARAMS[action]):
        raise PolicySyntaxError(
            file, line, f"invalid parameters for action {action.class_name}: {list(params)!r}"
        )
    redirect = _redirect(given.get("target"), file, line)
    default_target = _redirect(given.get("default_target"), file, line)
    if action is ActionType.ALLOW and target.kind is Kind.DEFAULT and redirect is None:
        raise PolicySyntaxError(
            file, line, "allow action for @default rule must specify target= option"
        )
    user = given.get("user")
    if user is not None and (not user or ":" in user):
        raise PolicySyntaxError(file, line, f"invalid user name: {user!r}")
    return Action(action, redirect, default_target, user, notify, autostart)


def parse_rule_fields(fields: Sequence[str], file: str | None, line: int, *,
                      empty_service: bool = False) -> Rule:
    """Build a rule from its whitespace-separated fields (also used for legacy lines, whose
    service comes from the file name and may be empty: `empty_service`)."""
    if len(fields) < 5:
        raise PolicySyntaxError(file, line, "wrong number of fields")
    service, argument, src, dst, word, *params = fields
    check_service_argument(service, argument, file, line, empty_service=empty_service)
    source = parse_token(src, Column.SOURCE, file, line)
    target = parse_token(dst, Column.TARGET, file, line)
    action = parse_action(word, params, target, file, line)
    return Rule(service, argument, source, target, action, file or "<unknown>", line)


_DIRECTIVE_PARAMS = {"!include": 1, "!include-dir": 1, "!include-service": 3, "!compat-4.0": 0}


def parse_directive(fields: Sequence[str], file: str | None, line: int) -> Directive:
    name, *params = fields
    count = _DIRECTIVE_PARAMS.get(name)
    if count is None:
        raise PolicySyntaxError(file, line, "invalid directive")
    if len(params) != count:
        raise PolicySyntaxError(file, line, "invalid number of params")
    if name == "!include-service":
        check_service_argument(params[0], params[1], file, line)
    return Directive(name, tuple(params), file or "<unknown>", line)


def parse_line(text: str, file: str | None, line: int) -> Rule | Directive | None:
    """Parse one line of a `policy.d` file; `None` for blank lines and comments."""
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split()
    if text.startswith("!"):
        return parse_directive(fields, file, line)
    return parse_rule_fields(fields, file, line)


def split_lines(data: bytes | str, file: str | None) -> list[str]:
    """Decode UTF-8 and split like Python text mode (LF, CR LF or a lone CR end a line)."""
    if isinstance(data, bytes):
        raw = data
        try:
            data = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            head = raw[: err.start].decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
            raise PolicySyntaxError(file, head.count("\n") + 1, "invalid UTF-8 text") from err
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines
