"""The audit trail's records and the end-of-call report (docs/audit.md). Pure.

One record is one JSON object on one line. Every string in it may come from a domain, so a
record is encoded with every non-ASCII and control character escaped: nothing a name contains
can end a line or forge another record.
"""

from __future__ import annotations

import functools
import posixpath
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..protocol.records import record

if TYPE_CHECKING:
    from json import JSONEncoder

__all__ = [
    "AUDIT_FILE",
    "AUDIT_SOCKET_NAME",
    "CALL_ADDRESS_PREFIX",
    "DECISION_FIELDS",
    "END_FIELDS",
    "CallIds",
    "EndReport",
    "ReportError",
    "audit_path",
    "audit_socket_for",
    "call_id_from_address",
    "decision_fields",
    "encode",
    "end_report_text",
    "new_call_id",
    "parse_end_report",
    "parse_records",
    "parse_time",
    "utc_ms",
]

AUDIT_FILE = "qrexec-audit.jsonl"
DEFAULT_LOG_DIR = "/var/log/qubes"
#: the end-report socket, next to the policy socket: its presence announces support
AUDIT_SOCKET_NAME = "policy-audit.sock"
#: a qrexec-daemon binds its policy connection to this abstract address + its call id, so
#: that the id reaches the policy daemon without one byte of the request changing
CALL_ADDRESS_PREFIX = b"\0pyqrexec-call:"
_CALL_ID = re.compile(rb"[0-9a-f]{16}")

#: every decision record has exactly these fields (null where they do not apply)
DECISION_FIELDS = (
    "time", "event", "call", "source", "requested_source", "intended_target", "target",
    "target_uuid", "service", "argument", "decision", "rule", "grant", "asked", "answer",
    "reason",
)  # fmt: skip
#: every end record has exactly these
END_FIELDS = (
    "time", "event", "call", "source", "target", "service", "argument", "scope",
    "duration_ms", "status", "bytes_in", "bytes_out",
)  # fmt: skip


def audit_path(env: Mapping[str, str]) -> str:
    """`QREXEC_LOG_DIR/qrexec-audit.jsonl` (default `/var/log/qubes`)."""
    return posixpath.join(env.get("QREXEC_LOG_DIR") or DEFAULT_LOG_DIR, AUDIT_FILE)


def audit_socket_for(policy_socket: str) -> str:
    return posixpath.join(posixpath.dirname(policy_socket), AUDIT_SOCKET_NAME)


def new_call_id() -> str:
    import secrets  # lazy: hashlib and libcrypto, ~4 MiB in every qrexec-daemon (end reports)

    return secrets.token_hex(8)


class CallIds:
    """Ids for the calls whose requester brought none: a random prefix and a counter, unique
    without asking the kernel for randomness on every decision. Such ids are never matched
    against an end report, so being predictable gives nothing away."""

    def __init__(self) -> None:
        self._prefix = ""
        self._next = 1 << 32

    def __call__(self) -> str:
        if self._next >> 32:
            import secrets  # lazy: ~4 MiB in every qrexec-daemon, as in new_call_id

            self._prefix, self._next = secrets.token_hex(4), 0
        self._next += 1
        return f"{self._prefix}{self._next - 1:08x}"


def call_id_from_address(address: object) -> str | None:
    """The call id a peer's abstract address carries, or None (an upstream daemon's peer)."""
    if isinstance(address, str):  # Python gives abstract names as bytes, others as str
        return None
    if not isinstance(address, bytes) or not address.startswith(CALL_ADDRESS_PREFIX):
        return None
    rest = address[len(CALL_ADDRESS_PREFIX) :]
    return rest.decode() if _CALL_ID.fullmatch(rest) else None


_second = -1
_second_text = ""


def utc_ms(now: float) -> str:
    """`2024-05-01T12:00:00.123Z`; the seconds part is formatted once per second."""
    global _second, _second_text
    whole = int(now)
    if whole != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = whole
    return f"{_second_text}.{int((now - whole) * 1000):03d}Z"


def parse_time(text: str) -> float:
    """A record's time, or a filter's: ISO 8601 (`Z` or an offset; a date alone is midnight
    UTC), or a plain number of seconds since the epoch."""
    from datetime import UTC, datetime  # lazy: ~0.4 MiB in every idle qrexec-daemon

    try:
        return float(text)
    except ValueError:
        pass
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


# `json` is imported where a record is written or read: every domain's qrexec-daemon loads
# this module for its end-of-call report and names only, and `json` would cost each 150 KiB.


def _text(value: str | None, escape: Callable[[str], str]) -> str:
    return "null" if value is None else escape(value)


def decision_fields(
    source: str, requested_source: str | None, intended_target: str,
    target: str | None, target_uuid: str | None, service: str, argument: str, allowed: bool,
    rule: str | None, grant: str | None, asked: bool, answer: str | None, reason: str | None,
) -> str:
    """A decision record's fields after `time`, `event` and `call` (`DECISION_FIELDS`), as
    `encode` would give them: one format string instead of a dict through the JSON encoder,
    since a decision's record is on the policy daemon's hot path."""
    from json.encoder import encode_basestring_ascii as esc  # lazy: see `_text`

    return (
        f'"source":{_text(source, esc)},'
        f'"requested_source":{_text(requested_source, esc)},'
        f'"intended_target":{_text(intended_target, esc)},"target":{_text(target, esc)},'
        f'"target_uuid":{_text(target_uuid, esc)},"service":{_text(service, esc)},'
        f'"argument":{_text(argument, esc)},"decision":"{"allow" if allowed else "deny"}",'
        f'"rule":{_text(rule, esc)},"grant":{_text(grant, esc)},'
        f'"asked":{"true" if asked else "false"},'
        f'"answer":{_text(answer, esc)},"reason":{_text(reason, esc)}'
    )


def encode(record: Mapping[str, Any]) -> bytes:
    """One record as one line. `ensure_ascii` escapes every control character (newline,
    U+2028 …) and every non-ASCII one; a byte string is never given here."""
    return _record_encoder().encode(record).encode("ascii") + b"\n"


@functools.cache
def _record_encoder() -> JSONEncoder:
    from json import JSONEncoder  # lazy: see `_text`

    return JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def parse_records(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The records of a log; a line that is not a whole JSON object (the last one of a file
    being written, say) is skipped."""
    import json  # lazy: see `_text`

    for line in lines:
        if not line.endswith(b"\n"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


# -- the end report: qrexec-daemon -> policy daemon, on the audit socket -------------------


class ReportError(ValueError):
    """Not an end report we understand: ignored."""


@record
class EndReport:
    call: str
    scope: str  # "call": the worker saw the call end; "connect": only its own part
    duration_ms: int
    status: int
    bytes_in: int | None = None
    bytes_out: int | None = None


_REPORT_TYPE = "end"
_MAX_REPORT = 1024
_SCOPES = ("call", "connect")


def end_report_text(report: EndReport) -> bytes:
    lines = [_REPORT_TYPE, f"call={report.call}", f"scope={report.scope}",
             f"duration_ms={report.duration_ms}", f"status={report.status}"]
    for key in ("bytes_in", "bytes_out"):
        value = getattr(report, key)
        if value is not None:
            lines.append(f"{key}={value}")
    return ("\n".join(lines) + "\n\n").encode("ascii")


def _count(values: Mapping[str, str], key: str, required: bool) -> int | None:
    text = values.get(key)
    if text is None:
        if required:
            raise ReportError(f"missing {key}")
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ReportError(f"bad {key}")
    return int(text)


def parse_end_report(data: bytes) -> EndReport:
    """The first line names the request type; unknown types and keys are errors or ignored
    (a newer peer may add keys), never guessed at."""
    if len(data) > _MAX_REPORT:
        raise ReportError("report too long")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as err:
        raise ReportError("not ASCII") from err
    kind, _, rest = text.partition("\n")
    if kind != _REPORT_TYPE:
        raise ReportError(f"unknown request type {kind[:32]!r}")
    values: dict[str, str] = {}
    for line in rest.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or key in values:
            raise ReportError("malformed line")
        values[key] = value
    call = values.get("call", "")
    if not _CALL_ID.fullmatch(call.encode()):
        raise ReportError("bad call id")
    scope = values.get("scope", "")
    if scope not in _SCOPES:
        raise ReportError("bad scope")
    duration = _count(values, "duration_ms", True)
    status = _count(values, "status", True)
    assert duration is not None and status is not None
    return EndReport(call, scope, duration, status,
                     _count(values, "bytes_in", False), _count(values, "bytes_out", False))


def answer_target(lines: Sequence[str]) -> tuple[str | None, str | None]:
    """(target, target_uuid) of an allow's answer lines."""
    target = uuid = None
    for line in lines:
        if line.startswith("target="):
            target = line[7:]
        elif line.startswith("target_uuid="):
            uuid = line[12:]
    return target, uuid
