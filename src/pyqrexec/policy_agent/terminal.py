"""The terminal front end: the person at a terminal answers policy.Ask
(docs/reference/policy.md#ask).

Usable on its own by a host manager that owns a terminal: give it the input file descriptor and
an output text stream. One prompt at a time; other asks wait their turn. Whatever is typed in
the first second after a prompt appears is thrown away (tty input flushed, lines read before
the deadline ignored), so keystrokes meant for something else cannot answer it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
from typing import TextIO

from ..policy.grants import ALWAYS, FOR, HALT, MAX_SECONDS
from .frontends import DenyAll
from .request import AskRequest, NotifyRequest, notification_texts, plain_text, target_label

__all__ = ["GUARD_SECONDS", "LineReader", "TerminalFrontend", "interpret", "prompt_text"]

GUARD_SECONDS = 1.0
MAX_LINE = 4096
DENY_WORDS = ("n", "no", "deny")


class LineReader:
    """Lines from a file descriptor through the running loop; cancelling a read loses nothing."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.eof = False
        self._arrived = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # e.g. EIO: the terminal went away
            data = b""
        if not data:
            self.eof = True
            self.close()
        self.buffer += data
        if len(self.buffer) > MAX_LINE and b"\n" not in self.buffer:
            self.buffer.clear()  # a runaway line is never a valid answer
        self._arrived.set()

    def _watch(self) -> None:
        if self._loop is None and not self.eof:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.fd, self._readable)

    async def readline(self) -> bytes | None:
        """The next line without its newline; None at end of input."""
        self._watch()
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line
            if self.eof:
                return None
            self._arrived.clear()
            await self._arrived.wait()

    def discard(self) -> None:
        """Drop what was typed but not yet read, in this buffer and in the tty."""
        self.buffer.clear()
        if os.isatty(self.fd):
            with contextlib.suppress(termios.error, OSError):
                termios.tcflush(self.fd, termios.TCIFLUSH)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop = None


def prompt_text(request: AskRequest) -> str:
    lines = [
        "",
        "=== qrexec policy: a call needs your decision ===",
        f"  Source:   {request.source}",
        f"  Service:  {request.service}",
    ]
    if request.shown_argument:
        lines.append(f"  Argument: {request.shown_argument}")
    lines.append("  Targets:")
    for number, target in enumerate(request.targets, 1):
        mark = "  (default)" if target == request.default_target else ""
        lines.append(f"    {number:>3}) {target_label(target)}{mark}")
    if request.default_target:
        lines.append(f"  Default:  {target_label(request.default_target)}")
    lines.append("(input in the next second is ignored)")
    return "\n".join(lines) + "\n"


def remember_help(request: AskRequest) -> str:
    """How to remember an answer, when the policy daemon offers it (else "")."""
    words = []
    if FOR in request.remember:
        words.append("5m / 1h / 30s = for that long")
    if HALT in request.remember:
        words.append("halt = until a qube halts")
    if ALWAYS in request.remember:
        words.append("always (allow only)")
    if not words:
        return ""
    return "  Remember the answer: add a word after it: " + ", ".join(words) + "\n"


def question_text(request: AskRequest) -> str:
    default = f"Enter = {target_label(request.default_target)}, " if request.default_target else ""
    return remember_help(request) + (
        f"Allow to which target? [number or name, {default}n = deny]: ")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _remember_word(word: str, request: AskRequest) -> str | None:
    """The reply suffix a typed word means ("" for none), or None if it means nothing."""
    word = word.lower()
    if word == "halt" and HALT in request.remember:
        return " until=halt"
    if word == ALWAYS and ALWAYS in request.remember:
        return " always"
    if FOR in request.remember and len(word) > 1 and word[:-1].isdigit() and word[-1] in _UNITS:
        seconds = int(word[:-1]) * _UNITS[word[-1]]
        return f" for={seconds}" if 0 < seconds <= MAX_SECONDS else None
    return None


def interpret(line: str, request: AskRequest) -> str | None:
    """The reply a typed line means, or None if it means nothing."""
    text = line.strip()
    if not text:
        return f"allow:{request.default_target}" if request.default_target else None
    choice, _, word = text.rpartition(" ") if " " in text else (text, "", "")
    suffix = ""
    if word:
        found = _remember_word(word, request)
        if found is None:  # maybe a label with a space, like "Disposable VM (x)"
            choice, suffix = text, ""
        else:
            suffix = found
    if not choice and word:
        return None
    if choice.lower() in DENY_WORDS:
        return None if suffix == " always" else "deny" + suffix
    if choice.isdigit() and 1 <= int(choice) <= len(request.targets):
        return f"allow:{request.targets[int(choice) - 1]}" + suffix
    for target in request.targets:
        if choice in (target, target_label(target)):
            return f"allow:{target}" + suffix
    return None


class TerminalFrontend(DenyAll):
    def __init__(
        self,
        input_fd: int,
        output: TextIO,
        log: logging.Logger,
        *,
        guard: float = GUARD_SECONDS,
    ) -> None:
        super().__init__(log)
        self.reader = LineReader(input_fd)
        self.output = output
        self.guard = guard
        self._turn = asyncio.Lock()

    def _write(self, text: str) -> None:
        try:
            self.output.write(text)
            self.output.flush()
        except (OSError, ValueError) as err:
            self.log.warning("cannot write to the terminal: %s", err)

    async def answer(self, request: AskRequest) -> str:
        async with self._turn:
            return await self._ask(request)

    async def _ask(self, request: AskRequest) -> str:
        loop = asyncio.get_running_loop()
        self._write(prompt_text(request))
        self.reader.discard()
        deadline = loop.time() + self.guard
        while (left := deadline - loop.time()) > 0:
            try:
                line = await asyncio.wait_for(self.reader.readline(), left)
            except TimeoutError:
                break
            if line is None:
                break
        self.reader.discard()  # also a half-typed line from the guard second
        self._write(question_text(request))
        while (line := await self.reader.readline()) is not None:
            reply = interpret(line.decode("utf-8", errors="replace"), request)
            if reply is not None:
                self._write(f"-> {reply}\n")
                return reply
            self._write("Not a candidate. " + question_text(request))
        self._write("\n(end of input: deny)\n")
        return "deny"

    async def notify(self, note: NotifyRequest) -> None:
        summary, body, _ = notification_texts(note)
        self._write(f"[qrexec] {summary}: {plain_text(body)}\n")

    @classmethod
    def open_tty(cls, path: str, log: logging.Logger) -> TerminalFrontend:
        """A front end on the terminal device `path` (read and written)."""
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        return cls(fd, open(os.dup(fd), "w", encoding="utf-8", errors="replace"), log)

    def close(self) -> None:
        self.reader.close()
