"""What `policy.RegisterArgument` accepts and writes (docs/reference/cli.md#policyregisterargument).

Pure: the program reads stdin and the environment, holds the lock, loads the policy and appends
the line; these functions only decide. Every input comes from the calling backend qube (the
argument) or from what it asked for (service, frontend), so each is checked before it can end up
in a policy file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import PolicySyntaxError
from .parser import Policy, parse_rule_fields
from .tokens import Kind

__all__ = [
    "MAX_ARGUMENT_LENGTH",
    "REGISTERED_FILE",
    "RegistrationRefused",
    "Registration",
    "check_argument",
    "make_registration",
    "already_registered",
    "policy_dirs",
]

MAX_ARGUMENT_LENGTH = 64
#: the file in the policy directory that collects registered arguments
REGISTERED_FILE = "60-registered-arguments.policy"
_QUBE_KINDS = (Kind.LITERAL, Kind.ADMINVM)
_ARGUMENT_BYTES = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
)


class RegistrationRefused(Exception):
    """The request is refused; the message is what the log says."""


@dataclass(frozen=True, slots=True)
class Registration:
    """One rule to append: `frontend` may call `service+argument` on `backend`."""

    service: str
    argument: str  # without the leading `+`
    frontend: str
    backend: str

    @property
    def line(self) -> str:
        return f"{self.service} +{self.argument} {self.frontend} {self.backend} allow\n"


def check_argument(data: bytes) -> str:
    """The argument sent on stdin, checked in the order the refusals are specified."""
    if len(data) > MAX_ARGUMENT_LENGTH:
        raise RegistrationRefused("argument too long")
    if not data:
        raise RegistrationRefused("empty argument")
    if not set(data) <= _ARGUMENT_BYTES:
        raise RegistrationRefused("invalid argument")
    return data.decode("ascii")


def make_registration(
    service: str | None, argument: str, frontend: str | None, backend: str | None
) -> Registration:
    """The registration for a checked `argument`, refused unless its line is a valid rule.

    `frontend` is None when the call named a keyword instead of a qube: a keyword such as
    `@default` names no frontend to register for.
    """
    if frontend is None:
        raise RegistrationRefused("the call must name the frontend qube, not a keyword")
    if not service:
        raise RegistrationRefused("no service to register (call policy.RegisterArgument+SERVICE)")
    if not backend:
        raise RegistrationRefused("no calling qube")
    for what, name in (("service", service), ("frontend", frontend), ("backend", backend)):
        if any(c.isspace() for c in name):
            raise RegistrationRefused(f"invalid {what} {name!r}")
    registration = Registration(service, argument, frontend, backend)
    try:
        rule = parse_rule_fields(registration.line.split(), REGISTERED_FILE, 0)
    except PolicySyntaxError as err:
        raise RegistrationRefused(f"invalid registration: {err.msg}") from err
    # `*`, `@anyvm` or `@tag:…` would register for more than the one pair of qubes (the
    # daemon sends keywords as keywords, so a named target never is one)
    for what, token in (("frontend", rule.source), ("backend", rule.target)):
        if token.kind not in _QUBE_KINDS:
            raise RegistrationRefused(f"invalid {what} {token.text!r}: not a qube name")
    return registration


def already_registered(policy: Policy, registration: Registration) -> bool:
    """True when a rule names exactly this service (not `*`) and exactly this argument."""
    argument = "+" + registration.argument
    return any(
        rule.service == registration.service and rule.argument == argument
        for rule in policy.rules_for(registration.service)
    )


def policy_dirs(runtime_dir: str, policy_dir: str) -> Sequence[str]:
    """The directories of the whole policy, runtime first as everywhere
    (docs/reference/policy.md#file-order)."""
    return [runtime_dir] if runtime_dir == policy_dir else [runtime_dir, policy_dir]
