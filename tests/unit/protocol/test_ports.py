"""The data-port table: the parity rule and the per-caller share (docs/daemon.md)."""

from __future__ import annotations

import pytest

from pyqrexec.protocol.ports import DEFAULT_SHARE, HALF, Busy, PortTable, check_share

OWN = 42


def fill(table: PortTable[object], peer: int, count: int) -> list[int | Busy]:
    return [table.allocate(peer, None) for _ in range(count)]


def test_parity_rule() -> None:
    table: PortTable[object] = PortTable(OWN)
    assert fill(table, 43, 2) == [514, 516]
    assert fill(table, 41, 2) == [513, 515]
    assert fill(table, OWN, 1) == [517]
    assert fill(table, 0, 3) == [518, 519, 520]


def test_defaults() -> None:
    assert (HALF, DEFAULT_SHARE) == (128, 64)
    assert PortTable(OWN).share == DEFAULT_SHARE


def test_one_caller_gets_its_share_only() -> None:
    table: PortTable[object] = PortTable(OWN)
    assert fill(table, 43, DEFAULT_SHARE) == list(range(514, 514 + 2 * DEFAULT_SHARE, 2))
    assert table.allocate(43, None) is Busy.SHARE
    # the others of the same half are not affected, nor the other half
    assert table.allocate(44, None) == 514 + 2 * DEFAULT_SHARE
    assert table.allocate(41, None) == 513
    # a release gives the caller exactly one back
    assert table.release(43, 600) == (True, None)
    assert table.allocate(43, None) == 600
    assert table.allocate(43, None) is Busy.SHARE


def test_a_full_half_is_full_whoever_holds_it() -> None:
    table: PortTable[object] = PortTable(OWN)
    for peer in (43, 44):
        assert Busy.SHARE not in fill(table, peer, HALF // 2)
    assert table.allocate(45, None) is Busy.FULL
    # full wins over share: the more general cause is the one to log
    assert table.allocate(43, None) is Busy.FULL
    assert table.allocate(41, None) == 513


def test_whole_half_share_is_the_parity_rule_alone() -> None:
    table: PortTable[object] = PortTable(OWN, share=HALF)
    assert fill(table, 43, HALF)[-1] == 768
    assert table.allocate(43, None) is Busy.FULL


def test_dom0_has_no_share() -> None:
    table: PortTable[object] = PortTable(OWN, share=1)
    ports = fill(table, 0, 256)
    assert ports == list(range(513, 769))
    assert table.allocate(0, None) is Busy.FULL
    assert table.allocate(43, None) is Busy.FULL


def test_share_counts_only_what_is_held() -> None:
    table: PortTable[object] = PortTable(OWN, share=2)
    a, b = fill(table, 43, 2)
    assert isinstance(a, int) and isinstance(b, int)
    # a release for the wrong domain or a free port changes nothing
    assert table.release(44, a) == (False, None)
    assert table.release(43, 700) == (False, None)
    assert table.release(43, 10) == (False, None)
    assert table.allocate(43, None) is Busy.SHARE
    assert table.release(43, a)[0]
    assert table.release(43, a) == (False, None)
    assert table.allocate(43, None) == a
    assert table.held == {43: 2}
    assert table.release(43, a)[0] and table.release(43, b)[0]
    assert table.held == {} and table.in_use() == 0


def test_waiters() -> None:
    table: PortTable[str] = PortTable(OWN)
    port = table.allocate(43, "client")
    other = table.allocate(43, "client")
    assert isinstance(port, int) and isinstance(other, int)
    assert table.release(43, port) == (True, "client")
    table.forget_waiter("client")
    assert table.release(43, other) == (True, None)


@pytest.mark.parametrize("value", [1, 64, HALF])
def test_check_share_accepts(value: int) -> None:
    assert check_share(value) == value


@pytest.mark.parametrize("value", [0, -1, HALF + 1, 256])
def test_check_share_refuses(value: int) -> None:
    with pytest.raises(ValueError, match="share"):
        check_share(value)
    with pytest.raises(ValueError):
        PortTable(OWN, share=value)
