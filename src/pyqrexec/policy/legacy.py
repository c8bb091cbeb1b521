"""Legacy per-service policy files (docs/reference/policy.md#legacy-per-service-files):
translation into current rules.

`translate_line` turns one legacy line into a `Rule` (validated like a `policy.d` rule) or an
include; `compat_order` selects and orders the files that `!compat-4.0` includes
(docs/reference/policy.md#compat-mode).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from .errors import PolicySyntaxError
from .parser import Rule, parse_rule_fields

__all__ = ["LegacyInclude", "LegacyFile", "translate_line", "compat_order", "synthetic_denies"]

_BARE = {"anyvm": "@anyvm", "dispvm": "@dispvm"}
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+._-")
_SKIPPED_SUFFIXES = (".rpmsave", ".rpmnew", ".swp")


@dataclass(frozen=True, slots=True)
class LegacyInclude:
    path: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class LegacyFile:
    """A file of the legacy directory and the service/argument it applies to."""

    name: str
    service: str
    argument: str  # "*" for a file without "+"


def _map_bare(param: str) -> str:
    key, sep, value = param.partition("=")
    if sep and key in ("target", "default_target"):
        return f"{key}={_BARE.get(value, value)}"
    return param


def translate_line(
    text: str, file: str, line: int, service: str, argument: str
) -> Rule | LegacyInclude | None:
    """Translate one legacy line for service/argument (docs/reference/policy.md#translation); None
    if blank/comment."""
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    text = text.replace("$include:", "!include ").replace("$", "@").replace(",", " ")
    fields = text.split()
    if text.startswith("!"):
        if fields[0] != "!include":
            raise PolicySyntaxError(file, line, "invalid directive")
        if len(fields) != 2:
            raise PolicySyntaxError(file, line, "invalid number of params")
        return LegacyInclude(fields[1], file, line)
    if len(fields) < 3:
        raise PolicySyntaxError(file, line, "wrong number of fields")
    src, dst, action, *params = fields
    return parse_rule_fields(
        [service, argument, _BARE.get(src, src), _BARE.get(dst, dst), action]
        + [_map_bare(p) for p in params],
        file,
        line,
        empty_service=True,
    )


def compat_order(names: Iterable[str]) -> tuple[list[LegacyFile], list[str]]:
    """Select and order legacy file names for `!compat-4.0` (docs/reference/policy.md#compat-mode
    steps 1–3).

    `names` must already be limited to regular files. Returns the files in order and the names
    skipped (for an info log line each).
    """
    files: list[LegacyFile] = []
    skipped: list[str] = []
    for name in names:
        if (
            name.startswith(".")
            or name.endswith(_SKIPPED_SUFFIXES)
            or not set(name) <= _NAME_CHARS
        ):
            skipped.append(name)
            continue
        service, plus, arg = name.partition("+")
        files.append(LegacyFile(name, service, "+" + arg if plus else "*"))
    files.sort(key=lambda f: (f.service.encode(), f.argument == "*", f.argument.encode()))
    return files, skipped


def synthetic_denies(service: str, argument: str, file: str) -> list[Rule]:
    """The two rules appended after a legacy file with an argument (line None)."""
    return [
        replace(parse_rule_fields([service, argument, "@anyvm", dst, "deny"], file, 0,
                                  empty_service=True), line=None)
        for dst in ("@anyvm", "@adminvm")
    ]
