"""One helper for the many "accepted, or RemoteProtocolError" tables of these tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

from pyqrexec.protocol.errors import RemoteProtocolError

T = TypeVar("T")


def verdict(ok: bool, fn: Callable[[], T], match: str | None = None) -> T | None:
    """Run `fn`: it must return when `ok`, else raise RemoteProtocolError (matching `match`)."""
    if ok:
        return fn()
    with pytest.raises(RemoteProtocolError, match=match):
        fn()
    return None
