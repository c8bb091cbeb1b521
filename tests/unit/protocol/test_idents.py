"""Request idents and name sanitising
(docs/reference/protocol.md#trigger-validation step 3,
docs/reference/protocol.md#request-idents)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyqrexec.protocol.errors import LocalProtocolError
from pyqrexec.protocol.idents import (
    DOMAIN_EXTRA,
    SERVICE_EXTRA,
    agent_ident,
    parse_agent_ident,
    sanitize_name,
    valid_ident,
)


@pytest.mark.parametrize(
    ("n", "field"),
    [(0, b"SOCKET0"), (7, b"SOCKET7"), (1023, b"SOCKET1023"), (10**25 - 1, b"SOCKET" + b"9" * 25)],
)
def test_agent_ident_zero_filled(n: int, field: bytes) -> None:
    ident = agent_ident(n)
    assert ident == field.ljust(32, b"\0")
    assert valid_ident(ident)


@pytest.mark.parametrize("n", [-1, 10**25])
def test_agent_ident_must_fit(n: int) -> None:
    with pytest.raises(LocalProtocolError):
        agent_ident(n)


@given(st.integers(0, 2**31 - 1))
def test_agent_ident_round_trip(n: int) -> None:
    assert parse_agent_ident(agent_ident(n)) == n


@pytest.mark.parametrize(
    ("field", "n"),
    [
        (b"SOCKET5".ljust(32, b"\0"), 5),
        (b"SOCKET5\0junk".ljust(32, b"\0"), 5),  # text ends at the first NUL
        (b"SOCKET5", 5),
        (b"SOCKET".ljust(32, b"\0"), None),  # client-vm placeholder
        (b"SOCKETx".ljust(32, b"\0"), None),
        (b"SOCKET5x".ljust(32, b"\0"), None),
        (b"SOCKET-5".ljust(32, b"\0"), None),
        (b"SOCKET 5".ljust(32, b"\0"), None),
        (b"socket5".ljust(32, b"\0"), None),
        (b"XSOCKET5".ljust(32, b"\0"), None),
        (bytes(32), None),
        (b"SOCKET2147483647".ljust(32, b"\0"), 2**31 - 1),
        (b"SOCKET2147483648".ljust(32, b"\0"), None),
    ],
)
def test_parse_agent_ident(field: bytes, n: int | None) -> None:
    assert parse_agent_ident(field) == n


@pytest.mark.parametrize("size", [0, 31, 33])
def test_valid_ident_needs_32_bytes(size: int) -> None:
    assert not valid_ident(bytes(size))


@given(st.binary(min_size=32, max_size=32))
def test_valid_ident_matches_rule(field: bytes) -> None:
    text, nul, rest = field.partition(b"\0")
    expected = (
        bool(nul)
        and all(chr(b) in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.- "
                for b in text)
        and not rest.strip(b"\0")
    )
    assert valid_ident(field) is expected


@pytest.mark.parametrize(
    ("field", "extra", "out"),
    [
        (b"a b+c@d:e\0x y", SERVICE_EXTRA, b"a_b+c_d_e\0x y"),
        (b"a b+c@d:e\0x y", DOMAIN_EXTRA, b"a_b_c@d_e\0x y".replace(b"d_e", b"d:e")),
        (b"Az09_.-", frozenset(), b"Az09_.-"),
        (b"\xff\x01~", frozenset(), b"___"),
        (b"", frozenset(), b""),
        (b"\0abc", frozenset(), b"\0abc"),
    ],
)
def test_sanitize_name(field: bytes, extra: frozenset[int], out: bytes) -> None:
    assert sanitize_name(field, extra) == out


@given(st.binary(max_size=80))
def test_sanitize_keeps_length_and_is_idempotent(field: bytes) -> None:
    once = sanitize_name(field, DOMAIN_EXTRA)
    assert len(once) == len(field)
    assert sanitize_name(once, DOMAIN_EXTRA) == once
