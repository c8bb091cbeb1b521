"""What reaches qrexec-policy-agent and what it may answer
(docs/reference/policy.md#ask-and-notify).

Everything here treats the request as hostile: any deviation from the documented shape is a
`RequestError`, which the server turns into `deny` (Ask) or a log line (Notify).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Any

from ..policy.grants import FOR, HALT, REMEMBER_OFFER, Remember, split_reply

__all__ = [
    "ASK",
    "NOTIFY",
    "AskRequest",
    "NotifyRequest",
    "RequestError",
    "checked_reply",
    "notification_texts",
    "parse_header",
    "parse_request",
    "plain_text",
    "remember_suffix",
    "target_label",
]

ASK = "policy.Ask"
NOTIFY = "policy.Notify"
DISPVM_PREFIX = "@dispvm:"

MAX_TARGETS = 10000
# printable ASCII without space: what qube, service and argument names are made of; keeps
# terminal escapes and layout tricks out of every front end
_WORD = re.compile(r"[\x21-\x7e]{1,256}")
_RESOLUTIONS = ("allow", "deny", "fail")


class RequestError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AskRequest:
    source: str
    service: str
    argument: str  # "+" or "+ARG"
    targets: tuple[str, ...]
    default_target: str  # "" or one of `targets`
    icons: tuple[tuple[str, str], ...]
    raw: bytes  # the JSON as received (what --answer-program reads)
    #: how the answer may be remembered (`for`, `halt`, `always`); empty from upstream
    remember: tuple[str, ...] = ()

    @property
    def shown_argument(self) -> str:
        """The argument as shown to a person: empty when it is `+`."""
        return "" if self.argument == "+" else self.argument


@dataclass(frozen=True, slots=True)
class NotifyRequest:
    resolution: str  # allow, deny or fail
    service: str
    argument: str
    source: str
    target: str


def parse_header(header: bytes) -> str:
    """The service word of `SERVICE SOURCE [...]` (docs/reference/policy.md#ask, agent side)."""
    try:
        words = header.decode("ascii").split(" ")
    except UnicodeDecodeError as err:
        raise RequestError("header is not ASCII") from err
    if len(words) < 2:
        raise RequestError(f"header has fewer than 2 words: {header!r}")
    if words[0] not in (ASK, NOTIFY):
        raise RequestError(f"unknown service {words[0]!r}")
    return words[0]


def _word(doc: dict[str, Any], key: str, *, empty: bool = False) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise RequestError(f"{key!r} missing or not a string")
    if value == "" and empty:
        return value
    if not _WORD.fullmatch(value):
        raise RequestError(f"{key!r} is not a valid name: {value!r}")
    return value


def _argument(doc: dict[str, Any]) -> str:
    value = _word(doc, "argument")
    if not value.startswith("+"):
        raise RequestError(f"argument does not start with '+': {value!r}")
    return value


def _ask(doc: dict[str, Any], raw: bytes) -> AskRequest:
    targets = doc.get("targets")
    if not isinstance(targets, list) or not targets or len(targets) > MAX_TARGETS:
        raise RequestError("'targets' missing, empty, too long or not a list")
    for target in targets:
        if not isinstance(target, str) or not _WORD.fullmatch(target):
            raise RequestError(f"invalid target {target!r}")
    if len(set(targets)) != len(targets):
        raise RequestError("duplicate targets")
    default = _word(doc, "default_target", empty=True)
    if default not in targets:
        default = ""  # never preselect something that cannot be chosen
    icons = doc.get("icons", {})
    if not isinstance(icons, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in icons.items()
    ):
        raise RequestError("'icons' is not an object of strings")
    remember = doc.get("remember", [])
    if not isinstance(remember, list):
        raise RequestError("'remember' is not a list")
    return AskRequest(
        remember=tuple(r for r in REMEMBER_OFFER if r in remember),  # unknown ones: not shown
        source=_word(doc, "source"),
        service=_word(doc, "service"),
        argument=_argument(doc),
        targets=tuple(targets),
        default_target=default,
        icons=tuple(icons.items()),
        raw=raw,
    )


def _notify(doc: dict[str, Any]) -> NotifyRequest:
    resolution = doc.get("resolution")
    if resolution not in _RESOLUTIONS:
        raise RequestError(f"invalid resolution {resolution!r}")
    assert isinstance(resolution, str)
    return NotifyRequest(
        resolution=resolution,
        service=_word(doc, "service"),
        argument=_argument(doc),
        source=_word(doc, "source"),
        target=_word(doc, "target"),
    )


def parse_request(data: bytes) -> AskRequest | NotifyRequest:
    """A whole connection's input: header, NUL, JSON (docs/reference/policy.md#ask)."""
    header, nul, payload = data.partition(b"\0")
    if not nul:
        raise RequestError("no NUL after the header")
    service = parse_header(header)
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise RequestError(f"invalid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise RequestError("JSON is not an object")
    return _ask(doc, payload) if service == ASK else _notify(doc)


def checked_reply(line: str, request: AskRequest) -> str:
    """`line` if it is `deny` or `allow:X` with X a candidate, else `deny`; a remembering
    suffix (` for=SECONDS`, ` until=halt`, ` always`) only if offered and well-formed (any
    other suffix makes the line invalid: `deny`)."""
    base, remember = split_reply(line.strip("\r\n"), request.remember)
    if base != "deny" and not (
        base.startswith("allow:") and base[len("allow:") :] in request.targets
    ):
        return "deny"
    return base + remember_suffix(remember)


def remember_suffix(remember: Remember | None) -> str:
    if remember is None:
        return ""
    if remember.kind == FOR:
        return f" for={remember.seconds}"
    return " until=halt" if remember.kind == HALT else " always"


def target_label(target: str) -> str:
    """How a candidate is shown: disposables as `Disposable VM (N)`."""
    if target.startswith(DISPVM_PREFIX):
        return f"Disposable VM ({target[len(DISPVM_PREFIX) :]})"
    return target


_TEXTS = {
    "allow": ("Allowed", "Allowed {call} from {source} to {target}", ""),
    "deny": ("Denied", "Denied {call} from {source} to {target}", "dialog-error"),
    "fail": ("Failed", "Failed to execute {call} (from {source} to {target})", "dialog-warning"),
}


def notification_texts(note: NotifyRequest) -> tuple[str, str, str]:
    """Summary (plain), body (Pango markup) and icon name ("" for none) of
    docs/reference/policy.md#notify."""
    word, body, icon = _TEXTS[note.resolution]
    call = note.service + ("" if note.argument == "+" else note.argument)

    def bold(text: str) -> str:
        return "<b>" + html.escape(text, quote=False) + "</b>"

    markup = body.format(call=bold(call), source=bold(note.source), target=bold(note.target))
    return f"{word}: {note.service}", markup, icon


_TAG = re.compile(r"</?b>")


def plain_text(markup: str) -> str:
    """A body of `notification_texts` without its markup."""
    return html.unescape(_TAG.sub("", markup))
