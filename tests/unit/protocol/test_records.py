"""protocol.records: what the message classes used of frozen, slotted dataclasses."""

from __future__ import annotations

import pytest

from pyqrexec.protocol.records import FrozenInstanceError, astuple, record


@record
class Point:
    x: int
    y: int
    label: bytes = b""


def test_construction_equality_hash_repr() -> None:
    p = Point(1, y=2)
    assert p == Point(1, 2, b"") and p != Point(1, 3) and p != (1, 2, b"")
    assert hash(p) == hash(Point(1, 2))
    assert repr(p) == "Point(x=1, y=2, label=b'')"
    assert Point.__match_args__ == ("x", "y", "label")


def test_frozen_and_slotted() -> None:
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError):
        p.x = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y
    assert not hasattr(p, "__dict__")


@pytest.mark.parametrize("args, kwargs", [((1,), {}), ((1, 2, b"", 4), {}),
                                          ((1, 2), {"x": 1}), ((1, 2), {"z": 0})])
def test_wrong_arguments(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        Point(*args, **kwargs)  # type: ignore[arg-type]


def test_match_by_position() -> None:
    match Point(4, 5):
        case Point(x, y, label):
            assert (x, y, label) == (4, 5, b"")
        case _:
            pytest.fail("no match")


@record
class Settings:
    """Properties and class methods stay, as the resident programs' option records use them."""

    name: str
    size: int = 1

    @property
    def double(self) -> int:
        return 2 * self.size

    @classmethod
    def big(cls, name: str) -> Settings:
        return cls(name, 100)


def test_methods_defaults_and_astuple() -> None:
    big = Settings.big("b")
    assert big == Settings("b", 100) and big.double == 200
    assert astuple(Settings("a")) == ("a", 1)
    assert Settings(*astuple(big)) == big
