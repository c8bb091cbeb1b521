"""Frozen records for the protocol's message classes, without `dataclasses`.

Importing `dataclasses` pulls in `inspect` (and with it `ast`, `dis`, `tokenize`) and each
class it builds compiles its methods with `exec`: about 7 ms on the start-up path of the
client programs, more than the work of a whole call. A record keeps what the protocol uses of
a frozen, slotted dataclass: construction by position or keyword, equality, hashing, repr,
immutability, `match` by position, and defaults for trailing fields.
"""

from __future__ import annotations

#: on the clients' start-up path: no `typing` at run time (mypy takes it as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from typing_extensions import dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_kw: object):  # noqa: ANN202 - typing stand-in
        return lambda f: f


__all__ = ["record", "astuple", "FrozenInstanceError"]


class FrozenInstanceError(AttributeError):
    """Assigning to a field of a record."""


def _init(names: tuple[str, ...], defaults: dict[str, object]):  # type: ignore[no-untyped-def]  # noqa: ANN202, E501
    def __init__(self: object, *args: object, **kwargs: object) -> None:
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}() takes {len(names)} arguments")
        values = dict(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key not in names or key in values:
                raise TypeError(f"{type(self).__name__}() got an unexpected or repeated "
                                f"argument {key!r}")
            values[key] = value
        if len(values) != len(names):
            values = {**defaults, **values}
        if len(values) != len(names):
            missing = [n for n in names if n not in values]
            raise TypeError(f"{type(self).__name__}() missing arguments: {missing}")
        for key in names:
            object.__setattr__(self, key, values[key])

    return __init__


def _fields(self: object) -> tuple[object, ...]:
    return tuple(getattr(self, n) for n in type(self).__match_args__)  # type: ignore[attr-defined]


def astuple(rec: object) -> tuple[Any, ...]:
    """A record's fields in order (shallow, unlike `dataclasses.astuple`)."""
    return _fields(rec)


def _eq(self: object, other: object) -> bool:
    if other.__class__ is not self.__class__:
        unknown: bool = NotImplemented
        return unknown
    return _fields(self) == _fields(other)


def _hash(self: object) -> int:
    return hash(_fields(self))


def _repr(self: object) -> str:
    names = type(self).__match_args__  # type: ignore[attr-defined]
    inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
    return f"{type(self).__qualname__}({inner})"


def _frozen(self: object, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_del(self: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


@dataclass_transform(frozen_default=True)
def record(cls: type[T]) -> type[T]:
    """A frozen record with a slot per annotated field, in the order they are declared."""
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    namespace = {k: v for k, v in cls.__dict__.items()
                 if k not in ("__dict__", "__weakref__") and k not in defaults}
    namespace.update(
        __slots__=names, __match_args__=names, __init__=_init(names, defaults), __eq__=_eq,
        __hash__=_hash, __repr__=_repr, __setattr__=_frozen, __delattr__=_frozen_del,
    )
    made: type[T] = type(cls.__name__, cls.__bases__, namespace)
    return made
