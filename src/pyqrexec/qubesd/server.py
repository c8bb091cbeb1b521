"""The qubesd socket protocol, server side (docs/reference/protocol.md#qubesd-calls,
docs/reference/cli.md#qrexec-host).

Request: `METHOD+ARG SOURCE TYPE DEST\\0PAYLOAD` up to EOF (TYPE `name` or `keyword`); the
answer is `0\\0DATA` or `2\\0TYPE\\0TRACEBACK\\0MESSAGE\\0` (empty traceback), then EOF.
The methods themselves are the `Backend`'s (host/methods.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Protocol

from .client import MAX_RESPONSE

__all__ = ["HostError", "Backend", "QubesdServer", "parse_request", "error_response"]

#: a request longer than this is refused (qubesd calls carry tiny payloads)
MAX_REQUEST = 65536


class HostError(Exception):
    """An error answer: `exc_type` is the upstream exception class name."""

    def __init__(self, exc_type: str, message: str) -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.message = message


class Backend(Protocol):
    async def handle(self, method: str, arg: str, dest: str, payload: bytes,
                     internal: bool) -> bytes: ...


def error_response(exc_type: str, message: str) -> bytes:
    return f"2\0{exc_type}\0\0{message}\0".encode()


def parse_request(data: bytes) -> tuple[str, str, str, bytes]:
    """(method, arg, destination, payload); a keyword destination gets its `@` back."""
    head, sep, payload = data.partition(b"\0")
    if not sep:
        raise HostError("QubesException", "malformed request")
    words = head.decode("utf-8", errors="replace").split(" ")
    if len(words) != 4 or words[2] not in ("name", "keyword"):
        raise HostError("QubesException", "malformed request")
    method, _, arg = words[0].partition("+")
    dest = f"@{words[3]}" if words[2] == "keyword" else words[3]
    return method, arg, dest, payload


class QubesdServer:
    """Serves one socket path; `internal` says which of the two it is."""

    def __init__(self, backend: Backend, path: str, internal: bool) -> None:
        self.backend = backend
        self.path = path
        self.internal = internal
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.server = await asyncio.start_unix_server(self._serve, self.path)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = b""
            while len(data) <= MAX_REQUEST and (chunk := await reader.read(65536)):
                data += chunk
            answer = await self.answer(data)
            writer.write(answer[:MAX_RESPONSE])
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def answer(self, data: bytes) -> bytes:
        try:
            if len(data) > MAX_REQUEST:
                raise HostError("QubesException", "request too long")
            method, arg, dest, payload = parse_request(data)
            return b"0\0" + await self.backend.handle(method, arg, dest, payload,
                                                      self.internal)
        except HostError as err:
            return error_response(err.exc_type, err.message)
