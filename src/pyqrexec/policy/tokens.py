"""Qube tokens of the policy columns (docs/reference/policy.md#tokens): parsing, matching and
expansion.

A token is plain data (`Token`): its kind, the text as written and, for prefix keywords, the part
after the prefix. Which kinds a column accepts is one table (`_COLUMNS`), so `@dispvm` in the
source column fails without a special case.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .errors import PolicySyntaxError
from .system_info import ADMIN_UUID, Domain, SystemInfo

__all__ = [
    "ADMIN_FORMS",
    "Column",
    "Kind",
    "Token",
    "UndecidableDispVM",
    "expand",
    "matches_source",
    "matches_target",
    "parse_token",
]

#: The three names of the administrative domain; as tokens they match one another.
ADMIN_FORMS = frozenset({"dom0", "@adminvm", "uuid:" + ADMIN_UUID})


class Column(Enum):
    """Where a token is written; the value is the word used in error messages."""

    SOURCE = "source"
    TARGET = "target"
    REDIRECT = "redirect"
    REQUEST = "intendedtarget"


class Kind(Enum):
    LITERAL = "literal"  # a qube name or uuid:U
    ADMINVM = "adminvm"  # dom0, @adminvm, uuid:0…0
    ANY = "*"
    ANYVM = "@anyvm"
    DEFAULT = "@default"
    TYPE = "@type:"
    TAG = "@tag:"
    DISPVM = "@dispvm"
    DISPVM_TEMPLATE = "@dispvm:"
    DISPVM_TAG = "@dispvm:@tag:"


_S, _T, _R, _Q = Column.SOURCE, Column.TARGET, Column.REDIRECT, Column.REQUEST
_COLUMNS: dict[Kind, frozenset[Column]] = {
    Kind.LITERAL: frozenset({_S, _T, _R, _Q}),
    Kind.ADMINVM: frozenset({_S, _T, _R, _Q}),
    Kind.ANY: frozenset({_S, _T}),
    Kind.ANYVM: frozenset({_S, _T}),
    Kind.DEFAULT: frozenset({_T, _Q}),
    Kind.TYPE: frozenset({_S, _T}),
    Kind.TAG: frozenset({_S, _T}),
    Kind.DISPVM: frozenset({_T, _R, _Q}),
    Kind.DISPVM_TEMPLATE: frozenset({_S, _T, _R, _Q}),
    Kind.DISPVM_TAG: frozenset({_S, _T}),
}
_EXACT = {"*": Kind.ANY, "@anyvm": Kind.ANYVM, "@default": Kind.DEFAULT, "@dispvm": Kind.DISPVM}
# Longest prefix first: "@dispvm:@tag:T" is a DISPVM_TAG, not a DISPVM_TEMPLATE.
_PREFIXES = (Kind.DISPVM_TAG, Kind.DISPVM_TEMPLATE, Kind.TYPE, Kind.TAG)


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    text: str
    value: str = ""  # the part after the prefix of a prefix keyword

    def __str__(self) -> str:
        return self.text


class UndecidableDispVM(Exception):
    """A `@dispvm:NAME` rule met a `@dispvm` request from a caller without `default_dispvm`."""


def parse_token(text: str, column: Column, file: str | None, line: int | None) -> Token:
    """Parse `text` written in `column`; raise `PolicySyntaxError` naming what is wrong."""

    def invalid() -> PolicySyntaxError:
        return PolicySyntaxError(file, line, f"invalid {column.value} token: {text!r}")

    if text in ADMIN_FORMS:
        kind, value = Kind.ADMINVM, ""
    elif text in _EXACT:
        kind, value = _EXACT[text], ""
    elif text.startswith("@"):
        for kind in _PREFIXES:
            if text.startswith(kind.value):
                value = text[len(kind.value) :]
                break
        else:
            raise invalid()
        if column not in _COLUMNS[kind]:
            raise invalid()
        if not value:
            raise PolicySyntaxError(file, line, f"invalid empty {kind.value} token: {text!r}")
        if value.startswith("@"):
            raise invalid()
    else:
        kind, value = Kind.LITERAL, ""
    if column not in _COLUMNS[kind]:
        raise invalid()
    return Token(kind, text, value)


def _same_qube(a: str, b: str, info: SystemInfo) -> bool:
    """Equal names, or one side `uuid:U` designating the same existing qube as the other."""
    if a == b:
        return True
    if not (a.startswith("uuid:") or b.startswith("uuid:")):
        return False
    da = info.get(a)
    return da is not None and da is info.get(b)


def _lookup(value: str, info: SystemInfo) -> Domain | None:
    """The qube named by a request value; keywords never name one."""
    return None if value.startswith("@") else info.get(value)


def _matches(token: Token, value: str, info: SystemInfo) -> bool:
    kind = token.kind
    if kind is Kind.ANY:
        return True
    if kind is Kind.LITERAL:
        return not value.startswith("@") and _same_qube(token.text, value, info)
    if kind is Kind.ADMINVM:
        return value in ADMIN_FORMS
    if kind is Kind.ANYVM:
        return value not in ADMIN_FORMS
    if kind is Kind.TYPE:
        d = _lookup(value, info)
        return d is not None and d.type == token.value
    if kind is Kind.TAG:
        d = _lookup(value, info)
        return d is not None and token.value in d.tags
    return False


def matches_source(token: Token, source: str, info: SystemInfo) -> bool:
    """Whether the SRC `token` matches the caller `source` (`@dispvm…` never does)."""
    return _matches(token, source, info)


def matches_target(token: Token, req: str, source: Domain | None, info: SystemInfo) -> bool:
    """Whether the DST `token` matches the verified request `req` of caller `source`.

    Raises `UndecidableDispVM` for a `@dispvm:NAME` token against a `@dispvm` request when the
    caller has no `default_dispvm` (docs/reference/policy.md#tokens notes).
    """
    kind = token.kind
    if kind is Kind.DEFAULT:
        return req == "@default"
    if kind is Kind.DISPVM:
        return req == "@dispvm"
    if kind is Kind.DISPVM_TEMPLATE or kind is Kind.DISPVM_TAG:
        default = source.default_dispvm if source is not None else None
        if req.startswith("@dispvm:"):
            name: str | None = req[len("@dispvm:") :]
        elif req == "@dispvm":
            if kind is Kind.DISPVM_TEMPLATE:
                if default is None:
                    raise UndecidableDispVM(token.text)
                return default == token.value
            name = default
        else:
            return False
        if name is None:
            return False
        if kind is Kind.DISPVM_TEMPLATE:
            return _same_qube(token.value, name, info)
        d = info.get(name)
        return d is not None and d.template_for_dispvms and token.value in d.tags
    return _matches(token, req, info)


def expand(token: Token, info: SystemInfo) -> list[str]:
    """What `token` can stand for as an ask candidate (docs/reference/policy.md#tokens, expansion
    table)."""
    # complexity 24: one branch per token kind, in the expansion table's order, so that the
    # table and the code can be read side by side
    kind = token.kind
    if kind is Kind.LITERAL:
        d = info.get(token.text)
        return [d.name] if d is not None else []
    if kind is Kind.ADMINVM:
        return [token.text]
    if kind is Kind.ANY or kind is Kind.ANYVM:
        names = [
            d.name
            for d in info
            if kind is Kind.ANY or not (d.name in ADMIN_FORMS or d.uuid == ADMIN_UUID)
        ]
        names += ["@dispvm:" + d.name for d in info.dispvm_templates()]
        return [*names, "@dispvm"]
    if kind is Kind.TYPE:
        return [d.name for d in info if d.type == token.value]
    if kind is Kind.TAG:
        return [d.name for d in info if token.value in d.tags]
    if kind is Kind.DISPVM:
        return ["@dispvm"]
    if kind is Kind.DISPVM_TEMPLATE:
        d = info.get(token.value)
        return ["@dispvm:" + d.name] if d is not None and d.template_for_dispvms else []
    if kind is Kind.DISPVM_TAG:
        return ["@dispvm:" + d.name for d in info.dispvm_templates() if token.value in d.tags]
    return []
