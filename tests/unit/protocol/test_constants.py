"""The constants of docs/reference/protocol.md#constants."""

from __future__ import annotations

import pytest

from pyqrexec.protocol import constants as c


def test_values() -> None:
    assert (c.PROTOCOL_VERSION, c.CLIENT_PROTOCOL_VERSION) == (4, 3)
    assert (c.MIN_AGENT_VERSION, c.MIN_CLIENT_VERSION, c.MIN_DATA_VERSION) == (2, 3, 2)
    assert (c.VCHAN_BASE_PORT, c.FIRST_DATA_PORT, c.LAST_DATA_PORT) == (512, 513, 768)
    assert c.LAST_DATA_PORT - c.FIRST_DATA_PORT + 1 == c.MAX_CLIENTS == 256
    assert (c.MAX_DATA_CHUNK_V2, c.MAX_DATA_CHUNK_V3) == (4096, 65536)
    assert (c.MAX_SERVICE_NAME_LEN, c.MAX_QREXEC_CMD_LEN) == (65000, 65535)
    assert (c.IDENT_SIZE, c.HEADER_SIZE) == (32, 8)
    assert (c.RPC_REQUEST_COMMAND, c.NOGUI_CMD_PREFIX) == (b"QUBESRPC", b"nogui:")
    assert (c.EXIT_SERVICE_NOT_FOUND, c.EXIT_REQUEST_REFUSED, c.EXIT_PROBLEM) == (127, 126, 125)


@pytest.mark.parametrize(("version", "limit"), [(2, 4096), (3, 65536), (4, 65536)])
def test_chunk_limit(version: int, limit: int) -> None:
    assert c.chunk_limit(version) == limit


def test_all_is_complete() -> None:
    for name in c.__all__:
        assert hasattr(c, name)
