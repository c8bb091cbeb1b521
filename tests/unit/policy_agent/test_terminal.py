"""The terminal front end on a pty: prompt text, answers, the ignored first second, queueing."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator

import pytest

from pyqrexec.policy_agent import TerminalFrontend
from pyqrexec.policy_agent.request import NotifyRequest
from pyqrexec.policy_agent.terminal import interpret, prompt_text

from .helpers import ask

GUARD = 1.0


class Pty:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.out = open(os.dup(self.slave), "w")  # noqa: SIM115
        self.seen = b""
        os.set_blocking(self.master, False)

    def frontend(self) -> TerminalFrontend:
        return TerminalFrontend(self.slave, self.out, logging.getLogger("test"), guard=GUARD)

    async def expect(self, text: bytes, timeout: float = 10) -> float:
        """Wait for `text` on the terminal; the time it was seen."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            assert time.monotonic() < deadline, self.seen
            try:
                self.seen += os.read(self.master, 65536)
            except BlockingIOError:
                await asyncio.sleep(0.01)
        at = time.monotonic()
        self.seen = self.seen[self.seen.index(text) + len(text) :]
        return at

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def reply(self, text: str) -> None:
        """Type `text` once the question is shown."""
        await self.expect(b"n = deny]: ")
        self.type(text)

    def close(self) -> None:
        self.out.close()
        os.close(self.slave)
        os.close(self.master)


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def test_prompt_text() -> None:
    text = prompt_text(ask())
    assert "Source:   work" in text
    assert "Service:  test.Svc" in text
    assert "Argument: +arg" in text
    assert "  1) Disposable VM (default-dvm)" in text
    assert "  3) vault  (default)" in text
    assert "Default:  vault" in text
    assert "Argument" not in prompt_text(ask(argument="+"))
    assert "Default" not in prompt_text(ask(default_target=""))


def test_interpret() -> None:
    request = ask()
    assert interpret("", request) == "allow:vault"
    assert interpret(" 2 ", request) == "allow:personal"
    assert interpret("1", request) == "allow:@dispvm:default-dvm"
    assert interpret("Disposable VM (default-dvm)", request) == "allow:@dispvm:default-dvm"
    assert interpret("@dispvm:default-dvm", request) == "allow:@dispvm:default-dvm"
    assert interpret("personal", request) == "allow:personal"
    for deny in ("n", "N", "no", "deny"):
        assert interpret(deny, request) == "deny"
    for nothing in ("0", "4", "sys-usb", "y"):
        assert interpret(nothing, request) is None
    assert interpret("", ask(default_target="")) is None


def test_interpret_remembering() -> None:
    import dataclasses

    request = dataclasses.replace(ask(), remember=("for", "halt", "always"))
    assert interpret("2 5m", request) == "allow:personal for=300"
    assert interpret("personal 1h", request) == "allow:personal for=3600"
    assert interpret("n 1h", request) == "deny for=3600"
    assert interpret("vault halt", request) == "allow:vault until=halt"
    assert interpret("vault always", request) == "allow:vault always"
    assert interpret("Disposable VM (default-dvm) 30s", request) == (
        "allow:@dispvm:default-dvm for=30")
    for nothing in ("n always", "vault 8d", "vault forever", "vault 0m"):
        assert interpret(nothing, request) is None
    # not offered (an upstream policy daemon): no remembering words
    assert interpret("vault always", ask()) is None


def test_first_second_ignored(pty: Pty) -> None:
    async def main() -> None:
        task = asyncio.create_task(pty.frontend().answer(ask()))
        shown = await pty.expect(b"(input in the next second is ignored)")
        pty.type("2\n")  # a keystroke meant for another window: ignored
        await asyncio.sleep(0.3)
        pty.type("deny\n")
        await asyncio.sleep(0.3)
        pty.type("n")  # half a line typed inside the second is thrown away too
        asked = await pty.expect(b"n = deny]: ")
        assert asked - shown >= GUARD - 0.05
        assert not task.done()
        pty.type("personal\n")
        assert await task == "allow:personal"

    run(main())


def test_invalid_then_default_then_deny(pty: Pty) -> None:
    async def main() -> None:
        frontend = pty.frontend()
        task = asyncio.create_task(frontend.answer(ask()))
        await pty.reply("sys-usb\n")
        await pty.expect(b"Not a candidate.")
        await pty.reply("\n")
        assert await task == "allow:vault"
        await pty.expect(b"-> allow:vault")
        task = asyncio.create_task(frontend.answer(ask()))
        await pty.reply("n\n")
        assert await task == "deny"

    run(main())


def test_one_prompt_at_a_time(pty: Pty) -> None:
    async def main() -> None:
        frontend = pty.frontend()
        first = asyncio.create_task(frontend.answer(ask(source="work")))
        second = asyncio.create_task(frontend.answer(ask(source="personal")))
        await pty.expect(b"Source:   work")
        await pty.reply("3\n")
        assert b"personal" not in pty.seen
        assert await first == "allow:vault"
        await pty.expect(b"Source:   personal")
        await pty.reply("2\n")
        assert await second == "allow:personal"

    run(main())


def test_notification_and_end_of_input(pty: Pty) -> None:
    async def main() -> None:
        frontend = pty.frontend()
        await frontend.notify(NotifyRequest("deny", "test.Svc", "+x", "work", "vault"))
        await pty.expect(b"Denied: test.Svc: Denied test.Svc+x from work to vault")
        r, w = os.pipe()
        os.close(w)
        closed = TerminalFrontend(r, pty.out, logging.getLogger("test"), guard=0.1)
        assert await closed.answer(ask()) == "deny"
        assert await closed.answer(ask()) == "deny"
        os.close(r)

    run(main())
