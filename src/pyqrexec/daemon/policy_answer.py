"""The policy's answer as qrexec-daemon reads it (docs/reference/policy.md#answer-lines "Consumer
rules"). Pure."""

from __future__ import annotations

from ..protocol.records import record

__all__ = ["ANSWER_LIMIT", "PolicyAnswer", "Malformed", "parse_answer", "request_text"]

#: answers longer than this are malformed
ANSWER_LIMIT = 4095
_ONCE = ("user", "target", "target_uuid", "autostart", "requested_target", "service",
         "policy_source")
_ALLOW_NEEDS = ("user", "target", "requested_target", "autostart")


class Malformed(ValueError):
    """The answer breaks the consumer rules."""


@record
class PolicyAnswer:
    allow: bool
    user: str | None = None
    target: str | None = None
    target_uuid: str | None = None
    autostart: bool = False
    requested_target: str | None = None
    service: str | None = None
    policy_source: str | None = None
    #: lines with unknown keys (logged, otherwise ignored)
    ignored: tuple[str, ...] = ()


def parse_answer(data: bytes) -> PolicyAnswer:
    if len(data) > ANSWER_LIMIT:
        raise Malformed(f"answer longer than {ANSWER_LIMIT} bytes")
    if b"\0" in data:
        raise Malformed("NUL byte in answer")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as err:
        raise Malformed("non-ASCII answer") from err
    if text.endswith("\n"):
        text = text[:-1]
    result, values, ignored = _lines(text)
    if "autostart" in values and values["autostart"] not in ("True", "False"):
        raise Malformed(f"bad autostart {values['autostart']!r}")
    present = [k for k in _ALLOW_NEEDS if k in values]
    if result == "allow" and len(present) != len(_ALLOW_NEEDS):
        raise Malformed("allow without user, target, requested_target and autostart")
    if result == "deny":
        if present:
            raise Malformed(f"deny with {', '.join(present)}")
        return PolicyAnswer(False, ignored=tuple(ignored))
    return PolicyAnswer(
        True,
        user=values["user"],
        target=values["target"],
        target_uuid=values.get("target_uuid"),
        autostart=values["autostart"] == "True",
        requested_target=values["requested_target"],
        service=values.get("service"),
        policy_source=values.get("policy_source"),
        ignored=tuple(ignored),
    )


def _lines(text: str) -> tuple[str, dict[str, str], list[str]]:
    """(result, the other known keys' values, lines with unknown keys) of an answer."""
    values: dict[str, str] = {}
    result: str | None = None
    ignored: list[str] = []
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if not sep:
            raise Malformed(f"line without '=': {line!r}")
        if key == "result":
            if result is not None:
                raise Malformed("result given twice")
            if value not in ("allow", "deny"):
                raise Malformed(f"bad result {value!r}")
            result = value
        elif key in _ONCE:
            if key in values:
                raise Malformed(f"{key} given twice")
            values[key] = value
        else:
            ignored.append(line)
    if result is None:
        raise Malformed("no result")
    return result, values, ignored


def request_text(source: str, target: str, service: str, requested_source: str | None) -> bytes:
    """The policy-daemon request (docs/reference/policy.md#policy-daemon-socket); `requested_source`
    only for v4 triggers."""
    lines = [f"source={source}"]
    if requested_source is not None:
        lines.append(f"requested_source={requested_source}")
    lines += [f"intended_target={target}", f"service_and_arg={service}", "", ""]
    return "\n".join(lines).encode("ascii")
