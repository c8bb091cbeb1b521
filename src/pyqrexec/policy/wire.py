"""What domains send to the policy daemon, parsed strictly
(docs/reference/policy.md#policy-daemon-socket, docs/reference/policy.md#evalsimple-and-evalgui).

Every byte here comes from outside dom0's control: anything unexpected is a `RequestError`, and
the daemon closes the connection without an answer.
"""

from __future__ import annotations

import re

from .evaluation import Request

__all__ = [
    "MAX_REQUEST_SIZE",
    "MAX_EVAL_BODY",
    "RequestError",
    "request_end",
    "parse_request",
    "parse_eval_header",
    "parse_eval_body",
]

MAX_REQUEST_SIZE = 65536
MAX_EVAL_BODY = 96
_KEYS = frozenset(
    {
        "source",
        "intended_target",
        "service_and_arg",
        "requested_source",
        "assume_yes_for_ask",
        "just_evaluate",
    }
)
_REQUIRED = ("source", "intended_target", "service_and_arg")
_BOOLEANS = {"yes": True, "no": False}
_UNEXPECTED_BYTE = re.compile(rb"[^\x20-\x7e\n]")
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@-")


class RequestError(ValueError):
    """A malformed request: close the connection, answer nothing."""


def request_end(buffer: bytes) -> int | None:
    """Length of the request in `buffer` if its ending empty line has arrived, else None."""
    if buffer.startswith(b"\n"):
        return 0
    end = buffer.find(b"\n\n")
    return None if end < 0 else end + 1


def parse_request(data: bytes) -> Request:
    """Parse `key=value\\n` lines (the ending empty line already removed)."""
    if len(data) > MAX_REQUEST_SIZE:
        raise RequestError("request too long")
    if _UNEXPECTED_BYTE.search(data):
        raise RequestError("non-ASCII or control byte in request")
    text = data.decode("ascii")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    values: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise RequestError(f"line without '=': {line!r}")
        if key not in _KEYS:
            raise RequestError(f"unknown key {key!r}")
        if key in values:
            raise RequestError(f"duplicate key {key!r}")
        values[key] = value
    for key in _REQUIRED:
        if key not in values:
            raise RequestError(f"missing key {key!r}")
    if not values["source"] or not values["service_and_arg"]:
        raise RequestError("empty source or service_and_arg")
    flags: dict[str, bool] = {}
    for key in ("assume_yes_for_ask", "just_evaluate"):
        if key in values:
            if values[key] not in _BOOLEANS:
                raise RequestError(f"invalid boolean for {key}: {values[key]!r}")
            flags[key] = _BOOLEANS[values[key]]
    return Request(
        values["source"],
        values["intended_target"],
        values["service_and_arg"],
        values.get("requested_source", ""),
        **flags,
    )


def _printable(data: bytes) -> bool:
    return all(0x21 <= b < 0x7F for b in data)


def parse_eval_header(header: bytes, service: str) -> tuple[str, str]:
    """`policy.EvalX+SERVICE+ARG REMOTE …` (NUL removed) → (queried `SERVICE+ARG`, REMOTE)."""
    descriptor, _, rest = header.partition(b" ")
    name, plus, queried = descriptor.partition(b"+")
    if name != service.encode() or not plus:
        raise RequestError(f"not a {service} call: {descriptor!r}")
    if not queried or queried.startswith(b"+") or not _printable(queried):
        raise RequestError(f"invalid queried service: {queried!r}")
    remote = rest.split(b" ", 1)[0]
    if not remote or not _printable(remote):
        raise RequestError(f"invalid caller: {remote!r}")
    return queried.decode(), remote.decode()


def parse_eval_body(body: bytes) -> tuple[str, str]:
    """`SOURCE\\0TARGET` → (source, target); both sanitized names
    (docs/reference/policy.md#evalsimple-and-evalgui step 3)."""
    source, sep, target = body.partition(b"\0")
    if not sep or not 1 <= len(source) <= 31 or not 1 <= len(target) <= 63:
        raise RequestError("invalid body")
    if not (set(source) <= _NAME_CHARS and set(target) <= _NAME_CHARS):
        raise RequestError("invalid characters in body")
    return source.decode(), target.decode()
