from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import QrexecHost, cleanup_dir


@pytest.fixture
def host() -> Iterator[QrexecHost]:
    # short paths: Unix socket names are limited to 107 bytes
    root = Path(tempfile.mkdtemp(prefix="qx", dir="/tmp"))
    h = QrexecHost(root)
    try:
        yield h
    finally:
        h.close()
        cleanup_dir(root)


@pytest.fixture
def work(host: QrexecHost):  # type: ignore[no-untyped-def]
    """One running domain `work` (domid 5) with its daemon and a root agent."""
    return host.domain("work", 5).start()
