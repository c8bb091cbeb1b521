"""qrexec-daemon's reading of the policy's answer (docs/reference/policy.md#answer-lines,
"Consumer rules"), fed bytes only."""

from __future__ import annotations

import pytest

from pyqrexec.daemon.policy_answer import (
    ANSWER_LIMIT,
    Malformed,
    PolicyAnswer,
    parse_answer,
    request_text,
)

ALLOW = (b"user=DEFAULT\nresult=allow\ntarget=vault\ntarget_uuid=uuid:1\nautostart=True\n"
         b"requested_target=vault\n")


def test_allow_reads_every_known_key() -> None:
    answer = parse_answer(ALLOW)
    assert answer == PolicyAnswer(True, user="DEFAULT", target="vault", target_uuid="uuid:1",
                                  autostart=True, requested_target="vault")


def test_allow_with_service_and_policy_source() -> None:
    answer = parse_answer(ALLOW + b"service=qubesair.SSHProxy+vault-b+test.Add+\n"
                          b"policy_source=remote")
    assert answer.service == "qubesair.SSHProxy+vault-b+test.Add+"
    assert answer.policy_source == "remote"


def test_deny_alone_and_unknown_lines_are_kept_aside() -> None:
    assert parse_answer(b"result=deny") == PolicyAnswer(False)
    answer = parse_answer(b"result=deny\nfuture=1\n")
    assert not answer.allow and answer.ignored == ("future=1",)
    assert parse_answer(ALLOW + b"x=y").ignored == ("x=y",)


def test_trailing_newline_is_optional() -> None:
    assert parse_answer(ALLOW.rstrip(b"\n")) == parse_answer(ALLOW)


@pytest.mark.parametrize(("data", "why"), [
    (b"", "line without '='"),
    (b"result=allow", "allow without"),
    (b"result=maybe", "bad result"),
    (b"result=deny\nresult=deny", "result given twice"),
    (b"user=x\nresult=deny", "deny with user"),
    (ALLOW + b"user=again", "user given twice"),
    (ALLOW.replace(b"autostart=True", b"autostart=yes"), "bad autostart"),
    (b"target=vault", "no result"),
    (b"result=deny\n\n", "line without '='"),
    (b"result=deny\0", "NUL byte"),
    ("result=deny\nx=é".encode(), "non-ASCII"),
    (b"result=deny\nx=" + b"a" * ANSWER_LIMIT, "longer than"),
])
def test_malformed_answers(data: bytes, why: str) -> None:
    with pytest.raises(Malformed, match=why):
        parse_answer(data)


def test_answer_at_the_limit_is_read() -> None:
    data = b"result=deny\nx=" + b"a" * (ANSWER_LIMIT - len(b"result=deny\nx="))
    assert len(data) == ANSWER_LIMIT
    assert not parse_answer(data).allow


def test_request_text() -> None:
    assert request_text("work", "vault", "test.Add+", None) == (
        b"source=work\nintended_target=vault\nservice_and_arg=test.Add+\n\n")
    assert request_text("relay", "vault", "s+", "work") == (
        b"source=relay\nrequested_source=work\nintended_target=vault\nservice_and_arg=s+\n\n")
