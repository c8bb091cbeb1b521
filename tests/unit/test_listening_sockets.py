"""The sockets our programs listen on for local clients appear only once they listen: a client
started together with the server finds the path missing (and may wait for it) or accepting,
never a file that refuses it (docs/reference/protocol.md#trigger-socket)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from pyqrexec.agent.trigger import TriggerSocket
from pyqrexec.daemon.client_socket import ClientSocket
from pyqrexec.daemon.daemon import Daemon


@pytest.fixture
def there_at_listen(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[bool]]:
    """For each path to watch (the test adds it as a key): whether it existed at each listen."""
    seen: dict[str, list[bool]] = {}
    listen = socket.socket.listen

    def watched(sock: socket.socket, backlog: int) -> None:
        for path, found in seen.items():
            found.append(os.path.lexists(path))
        listen(sock, backlog)

    monkeypatch.setattr(socket.socket, "listen", watched)
    return seen


def accepting(path: Path) -> None:
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777  # any local program may be a client
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))


def test_the_agents_trigger_socket(tmp_path: Path, there_at_listen: dict[str, list[bool]]
                                   ) -> None:
    path = tmp_path / "qrexec-agent"
    path.write_bytes(b"")  # a stale file from an agent before
    there_at_listen[str(path)] = []

    async def started() -> None:
        async def ready() -> None:
            return None

        trigger = TriggerSocket(str(path), lambda _: None, lambda: 4, ready)
        trigger.start()
        try:
            assert there_at_listen[str(path)] == [False]
            accepting(path)
            assert os.listdir(tmp_path) == [path.name]
        finally:
            trigger.close()
        assert not path.exists()

    asyncio.run(started())


def test_the_daemons_client_socket(tmp_path: Path, there_at_listen: dict[str, list[bool]]
                                   ) -> None:
    path, link = tmp_path / "qrexec.7", tmp_path / "qrexec.work"
    path.write_bytes(b"")  # what a daemon before left
    link.symlink_to("elsewhere")
    there_at_listen.update({str(path): [], str(link): []})

    async def started() -> None:
        daemon = cast(Daemon, SimpleNamespace(loop=asyncio.get_running_loop()))
        client_socket = ClientSocket(daemon)
        client_socket.open(str(path), [str(link)])
        try:
            assert there_at_listen == {str(path): [False], str(link): [False]}
            accepting(path)
            accepting(link)
            assert os.readlink(link) == path.name
            assert sorted(os.listdir(tmp_path)) == sorted([path.name, link.name])
        finally:
            client_socket.close()
        assert os.listdir(tmp_path) == []

    asyncio.run(started())
