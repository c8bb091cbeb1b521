"""The agent's socket server: replies, hostile input, concurrent asks."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from pyqrexec.policy_agent import AgentServer, AskRequest, NotifyRequest
from pyqrexec.policy_agent.server import MAX_REQUEST

from .helpers import ask_data, notify_data


class Scripted:
    """Answers each ask when the test releases it; records notifications."""

    def __init__(self) -> None:
        self.pending: dict[str, asyncio.Future[str]] = {}
        self.asked = asyncio.Event()
        self.notes: list[NotifyRequest] = []

    async def answer(self, request: AskRequest) -> str:
        future = asyncio.get_running_loop().create_future()
        self.pending[request.source] = future
        self.asked.set()
        return await future

    async def notify(self, note: NotifyRequest) -> None:
        self.notes.append(note)


class Broken:
    async def answer(self, request: AskRequest) -> str:
        raise RuntimeError("front end bug")

    async def notify(self, note: NotifyRequest) -> None:
        raise RuntimeError("front end bug")


async def query(path: str, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    writer.write_eof()
    reply = await reader.read()
    writer.close()
    return reply


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def log() -> logging.Logger:
    return logging.getLogger("test-policy-agent")


def test_concurrent_asks_do_not_block_each_other(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.sock")
    frontend = Scripted()

    async def main() -> None:
        server = await AgentServer(frontend, log()).start(path)
        first = asyncio.create_task(query(path, ask_data(source="work")))
        await frontend.asked.wait()
        frontend.asked.clear()
        second = asyncio.create_task(query(path, ask_data(source="personal")))
        await frontend.asked.wait()
        # a notification goes through while both asks are open
        assert await query(path, notify_data()) == b""
        frontend.pending["personal"].set_result("allow:personal")
        assert await second == b"allow:personal"
        assert not first.done()
        frontend.pending["work"].set_result("allow:sys-usb")  # not offered: checked again
        assert await first == b"deny"
        server.close()

    run(main())
    assert [n.resolution for n in frontend.notes] == ["deny"]


def test_hostile_requests(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "agent.sock")

    async def main() -> None:
        server = await AgentServer(Scripted(), log()).start(path)
        assert await query(path, b"policy.Ask dom0\0{") == b"deny"
        assert await query(path, ask_data(targets=["\x07"])) == b"deny"
        assert await query(path, b"policy.Ask dom0\0" + b" " * (MAX_REQUEST + 10)) == b"deny"
        assert await query(path, b"policy.Notify dom0\0[]") == b""
        assert await query(path, b"policy.Evil dom0\0{}") == b""
        assert await query(path, b"") == b""
        server.close()

    with caplog.at_level(logging.WARNING):
        run(main())
    assert caplog.text.count("invalid policy agent request") == 6


def test_front_end_errors_deny(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.sock")

    async def main() -> None:
        server = await AgentServer(Broken(), log()).start(path)
        assert await query(path, ask_data()) == b"deny"
        assert await query(path, notify_data()) == b""
        server.close()

    run(main())


def test_stale_socket_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.sock")

    async def main() -> None:
        for _ in range(2):
            server = await AgentServer(Scripted(), log()).start(path)
            server.close()
            await server.wait_closed()
        server = await AgentServer(Scripted(), log()).start(path)
        assert await query(path, notify_data()) == b""
        server.close()

    run(main())
