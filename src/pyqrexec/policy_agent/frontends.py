"""Front ends of the agent: who answers policy.Ask and where policy.Notify goes.

A front end is any object with `answer(request) -> str` (the reply line) and `notify(note)`, both
async. The server checks every reply again (`checked_reply`), so a front end cannot allow a
target that was not offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import signal
from typing import Protocol

from ..system.parent_death import dies_with_this_process
from .request import AskRequest, NotifyRequest, checked_reply, notification_texts, plain_text

__all__ = ["AnswerProgram", "DenyAll", "Frontend", "MAX_PROGRAM_OUTPUT", "log_notification"]

MAX_PROGRAM_OUTPUT = 65536


class Frontend(Protocol):
    async def answer(self, request: AskRequest) -> str: ...

    async def notify(self, note: NotifyRequest) -> None: ...


def log_notification(log: logging.Logger, note: NotifyRequest) -> None:
    """A notification as one log line: `SUMMARY: BODY` with the body's markup removed."""
    summary, body, _ = notification_texts(note)
    log.info("%s: %s", summary, plain_text(body))


class DenyAll:
    """No way to ask anyone: every ask is denied, notifications are logged."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    async def answer(self, request: AskRequest) -> str:
        self.log.info("no front end to ask about %s from %s: deny", request.service, request.source)
        return "deny"

    async def notify(self, note: NotifyRequest) -> None:
        log_notification(self.log, note)


class AnswerProgram(DenyAll):
    """`--answer-program PROG`: PROG (split like a shell word list, never run by a shell) reads
    the request JSON on stdin; its first output line is the reply if valid
    (docs/reference/policy.md#ask). A program that cannot run or exits non-zero denies."""

    def __init__(self, program: str, log: logging.Logger) -> None:
        super().__init__(log)
        self.argv = shlex.split(program)
        if not self.argv:
            raise ValueError("empty answer program")

    async def answer(self, request: AskRequest) -> str:
        try:
            # like a dialog, the program goes with the agent that asked: its answer could
            # reach nobody (SIGTERM: a program may want to tidy up)
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                preexec_fn=dies_with_this_process(signal.SIGTERM),
            )
        except OSError as err:
            self.log.warning("cannot run answer program %s: %s", self.argv[0], err)
            return "deny"
        assert proc.stdin is not None and proc.stdout is not None
        # a program that does not read its input may still answer
        with contextlib.suppress(OSError):
            proc.stdin.write(request.raw)
            await proc.stdin.drain()
        proc.stdin.close()
        out = b""
        while len(out) <= MAX_PROGRAM_OUTPUT and (chunk := await proc.stdout.read(65536)):
            out += chunk
        if len(out) > MAX_PROGRAM_OUTPUT:
            proc.kill()
            await proc.wait()
            self.log.warning("answer program %s wrote too much", self.argv[0])
            return "deny"
        status = await proc.wait()
        if status != 0:
            self.log.warning("answer program %s exited with status %s", self.argv[0], status)
            return "deny"
        line = out.split(b"\n", 1)[0].decode("ascii", errors="replace")
        reply = checked_reply(line, request)
        if reply != line:
            self.log.warning("answer program %s gave an invalid answer: %r", self.argv[0], line)
        return reply
