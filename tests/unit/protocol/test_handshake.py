"""HELLO negotiation per channel (docs/reference/protocol.md#hello)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyqrexec.protocol.errors import RemoteProtocolError
from pyqrexec.protocol.handshake import (
    check_client_hello,
    check_hello_header,
    negotiate_control,
    negotiate_data,
    own_max_version,
)

from .verdict import verdict


@pytest.mark.parametrize(("setting", "version"), [(None, 4), ("2", 2), ("3", 3), ("4", 4)])
def test_max_version_setting_accepted(setting: str | None, version: int) -> None:
    assert own_max_version(setting) == (version, None)


@pytest.mark.parametrize(
    "setting", ["", "1", "5", "0", "-4", " 3", "3 ", "3\n", "03", "+3", "4.0", "three", "٣"]
)
def test_max_version_setting_ignored_with_warning(setting: str) -> None:
    version, warning = own_max_version(setting)
    assert version == 4
    assert warning is not None
    assert "QREXEC_MAX_PROTOCOL_VERSION" in warning


# (peer, own max, negotiated or None for failure)
CONTROL = [(4, 4, 4), (3, 4, 3), (2, 4, 2), (1, 4, None), (0, 4, None), (5, 4, 4),
           (0xFFFF_FFFF, 4, 4), (4, 3, 3), (4, 2, 2), (2, 3, 2), (3, 2, 2)]


@pytest.mark.parametrize(("peer", "own", "expected"), CONTROL)
@pytest.mark.parametrize("negotiate", [negotiate_control, negotiate_data])
def test_control_and_data(
    peer: int, own: int, expected: int | None, negotiate: Callable[[int, int], int]
) -> None:
    """Control and data channels share the rule: min(peer, own) >= 2."""
    result = verdict(expected is not None, lambda: negotiate(peer, own),
                     rf"remote {peer}, local {own}")
    assert result == expected


def test_defaults_to_own_maximum_4() -> None:
    assert negotiate_control(7) == 4
    assert negotiate_data(3) == 3


@given(st.integers(0, 0xFFFF_FFFF), st.sampled_from([2, 3, 4]))
def test_both_ends_agree(agent: int, own: int) -> None:
    """Daemon replies min(agent, own); the agent's own min() yields the same version."""
    try:
        daemon_v = negotiate_control(agent, own)
    except RemoteProtocolError:
        assert min(agent, own) < 2
        return
    assert negotiate_control(daemon_v, agent if agent <= 4 else 4) == daemon_v


@pytest.mark.parametrize(("peer", "ok"), [(0, False), (2, False), (3, True), (4, True),
                                          (0xFFFF_FFFF, True)])
def test_daemon_socket(peer: int, ok: bool) -> None:
    """Client and daemon: version >= 3, no upper bound; the channel runs at 3."""
    assert verdict(ok, lambda: check_client_hello(peer)) == (3 if ok else None)


@pytest.mark.parametrize(
    ("msgtype", "length", "ok"),
    [(0x300, 4, True), (0x300, 3, False), (0x300, 5, False), (0x300, 0, False),
     (0x200, 4, False), (0x190, 4, False)],
)
def test_hello_header(msgtype: int, length: int, ok: bool) -> None:
    verdict(ok, lambda: check_hello_header(msgtype, length), "expected HELLO")
