"""Remembered answers to an ask (docs/audit.md "Grants"). Pure.

A grant is keyed by the request exactly as it was asked — effective source, requested target,
service, argument — and by the ask rule that asked: it is consulted only once evaluation has
reached that very rule (same file, line and text), so a deny rule, or any rule above the ask
rule, is never short-cut. The answer it repeats is checked again like a fresh reply.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from .audit import utc_ms
from .parser import ActionType, Rule
from .system_info import SystemInfo

__all__ = [
    "ALWAYS",
    "FOR",
    "HALT",
    "MAX_SECONDS",
    "REMEMBER_OFFER",
    "Grant",
    "GrantTable",
    "Remember",
    "always_rule",
    "rule_id",
    "running",
    "split_reply",
    "unusable",
]

FOR = "for"
HALT = "halt"
ALWAYS = "always"
#: what the policy daemon offers in policy.Ask's `remember` key
REMEMBER_OFFER = (FOR, HALT, ALWAYS)
#: the longest time a grant may last (7 days): "longer" is what "always" is for
MAX_SECONDS = 7 * 24 * 3600
_RULE_WORD = re.compile(r"[A-Za-z0-9_.:@+-]+")


@dataclass(frozen=True, slots=True)
class Remember:
    kind: str  # FOR, HALT or ALWAYS
    seconds: int = 0  # FOR only


def split_reply(reply: str, offered: Iterable[str] = REMEMBER_OFFER) -> tuple[str, Remember | None]:
    """`allow:T for=300` → (`allow:T`, Remember(for, 300)). With a suffix that is malformed
    or was not offered the reply comes back whole: an invalid answer, denied like any other."""
    base, sep, suffix = reply.partition(" ")
    if not sep:
        return reply, None
    offered = tuple(offered)
    remember: Remember | None = None
    if suffix.startswith("for=") and FOR in offered:
        text = suffix[4:]
        if text.isascii() and text.isdigit() and 0 < int(text) <= MAX_SECONDS:
            remember = Remember(FOR, int(text))
    elif suffix == "until=halt" and HALT in offered:
        remember = Remember(HALT)
    elif suffix == ALWAYS and ALWAYS in offered and base.startswith("allow:"):
        remember = Remember(ALWAYS)
    if remember is None:
        return reply, None
    return base, remember


def rule_id(rule: Rule) -> str:
    """The ask rule as a grant names it: place and text, so an edited rule asks again."""
    return f"{rule.where}\t{rule}"


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    source: str
    target: str  # the target as requested (`@default`, a name, …)
    service: str
    argument: str
    rule: str  # rule_id() of the ask rule
    answer: str  # "allow:TARGET" or "deny"
    created: float
    expires: float | None  # wall-clock seconds; None: until a qube in `halts` halts
    halts: tuple[str, ...] = ()
    guivm: str = ""  # where the person who answered sat
    #: those of `halts` seen running since the answer: only they can halt (a target that
    #: the call itself is to start is not "halted" before it ever ran)
    seen: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.source, self.target, self.service, self.argument)

    @property
    def where(self) -> str:
        return self.rule.split("\t", 1)[0]

    def describe(self) -> str:
        end = f"until {', '.join(self.halts)} halts" if self.expires is None else (
            "until " + _iso(self.expires))
        return (f"grant {self.id}: {self.answer} for {self.source} -> {self.target} "
                f"{self.service}{self.argument}, {end} (ask rule {self.where})")

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["halts"] = list(self.halts)
        out["seen"] = list(self.seen)
        return out

    @classmethod
    def from_json(cls, doc: object) -> Grant:
        if not isinstance(doc, dict):
            raise ValueError("grant is not an object")
        strings = ("id", "source", "target", "service", "argument", "rule", "answer", "guivm")
        for key in strings:
            if not isinstance(doc.get(key), str):
                raise ValueError(f"grant: {key} is not a string")
        expires = doc.get("expires")
        created = doc.get("created")
        halts = doc.get("halts", [])
        seen = doc.get("seen", [])
        if expires is not None and not isinstance(expires, int | float):
            raise ValueError("grant: bad expires")
        if not isinstance(created, int | float):
            raise ValueError("grant: bad created")
        for names in (halts, seen):
            if not isinstance(names, list) or not all(isinstance(h, str) for h in names):
                raise ValueError("grant: bad halts or seen")
        return cls(doc["id"], doc["source"], doc["target"], doc["service"], doc["argument"],
                   doc["rule"], doc["answer"], float(created),
                   None if expires is None else float(expires), tuple(halts), doc["guivm"],
                   tuple(seen))


def _iso(t: float) -> str:
    return utc_ms(t)


class GrantTable:
    """The live grants, one per key (a newer answer replaces an older one)."""

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        self.by_key: dict[tuple[str, str, str, str], Grant] = {g.key: g for g in grants}

    def __iter__(self) -> Iterator[Grant]:
        return iter(sorted(self.by_key.values(), key=lambda g: g.created))

    def __len__(self) -> int:
        return len(self.by_key)

    def add(self, grant: Grant) -> Grant | None:
        """Add `grant`; the one it replaces, if any."""
        old = self.by_key.get(grant.key)
        self.by_key[grant.key] = grant
        return old

    def find(self, key: tuple[str, str, str, str], rule: str) -> Grant | None:
        grant = self.by_key.get(key)
        return grant if grant is not None and grant.rule == rule else None

    def remove(self, grant_id: str) -> Grant | None:
        for key, grant in self.by_key.items():
            if grant.id == grant_id:
                del self.by_key[key]
                return grant
        return None

    def expired(self, now: float) -> list[Grant]:
        """Remove and return the grants whose time is up."""
        gone = [g for g in self.by_key.values() if g.expires is not None and g.expires <= now]
        for grant in gone:
            del self.by_key[grant.key]
        return gone

    def next_expiry(self) -> float | None:
        times = [g.expires for g in self.by_key.values() if g.expires is not None]
        return min(times) if times else None

    def dumps(self) -> bytes:
        doc = {"version": 1, "grants": [g.to_json() for g in self]}
        return json.dumps(doc, indent=1).encode() + b"\n"

    @classmethod
    def loads(cls, data: bytes) -> GrantTable:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError("not a version 1 grants file")
        grants = doc.get("grants")
        if not isinstance(grants, list):
            raise ValueError("grants is not a list")
        return cls(Grant.from_json(g) for g in grants)


def unusable(grant: Grant, candidates: Iterable[str], info: SystemInfo, now: float) -> str:
    """Why `grant` cannot decide now ("" when it can): "expired", "NAME halted" (both end
    it), or "not a choice" (the target is not offered any more: ask, keep the grant)."""
    if grant.expires is not None and grant.expires <= now:
        return "expired"
    for name in grant.seen:
        domain = info.get(name)
        if domain is None or not domain.is_running:
            return f"{name} halted"
    if grant.answer.startswith("allow:") and grant.answer[6:] not in candidates:
        return "not a choice"
    return ""


def running(names: Iterable[str], info: SystemInfo) -> tuple[str, ...]:
    return tuple(n for n in names if (d := info.get(n)) is not None and d.is_running)


def new_grant_id() -> str:
    return secrets.token_hex(4)


def always_rule(rule: Rule, source: str, target: str, service: str, argument: str,
                chosen: str) -> str:
    """The allow rule that makes "always" of an ask: the same request, the chosen target, and
    the ask rule's user and autostart."""
    assert rule.action.type is ActionType.ASK
    for word in (source, target, service, argument, chosen):
        # the request's words reach a policy file: one that could split a column (a space,
        # `#`) or the line must never be written
        if not _RULE_WORD.fullmatch(word):
            raise ValueError(f"cannot write a rule for {word!r}")
    params = [] if chosen == target else [f"target={chosen}"]
    if rule.action.user is not None:
        params.append(f"user={rule.action.user}")
    if not rule.action.autostarts:
        params.append("autostart=no")
    return "\t".join([service, argument, source, target, " ".join(["allow", *params])])
