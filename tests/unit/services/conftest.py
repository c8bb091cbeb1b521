from __future__ import annotations

from collections.abc import Callable

import pytest

from pyqrexec.protocol.cmdline import ServiceCall, parse_command


def _service_call(text: bytes) -> ServiceCall:
    service = parse_command(text).service
    assert service is not None
    return service


@pytest.fixture
def call() -> Callable[[bytes], ServiceCall]:
    """Parse a QUBESRPC command line and return its service part."""
    return _service_call
