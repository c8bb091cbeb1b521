"""The policy daemon's sockets: requests (policy.md §7) and policy.EvalSimple/EvalGUI (§9).

One task per request, so an open ask dialog never holds up another request. The request socket
is the hot path and uses a bare protocol; the Eval sockets use streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine
from typing import Any

from ..policy.errors import SystemInfoError
from ..policy.evaluation import Request
from ..policy.wire import (
    MAX_EVAL_BODY,
    MAX_REQUEST_SIZE,
    RequestError,
    parse_eval_body,
    parse_eval_header,
    parse_request,
    request_end,
)
from .engine import PolicyEngine

__all__ = ["PolicyServer"]

_MAX_HEADER = 4096


async def _read_eval(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The service header (up to its NUL) and at most `MAX_EVAL_BODY` bytes of body."""
    try:
        header = await reader.readuntil(b"\0")
    except asyncio.IncompleteReadError as err:
        raise RequestError("header not NUL-terminated") from err
    except asyncio.LimitOverrunError as err:
        raise RequestError("header too long") from err
    body = b""
    while len(body) < MAX_EVAL_BODY and (chunk := await reader.read(MAX_EVAL_BODY - len(body))):
        body += chunk
    return header[:-1], body


class _RequestProtocol(asyncio.Protocol):
    """One policy request per connection (policy.md §7), answered without stream objects."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.buffer = b""
        self.started = False
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.started:
            return  # bytes after the request are ignored
        self.buffer += data
        end = request_end(self.buffer)
        if end is not None:
            self._start(self.buffer[:end])
        elif len(self.buffer) > MAX_REQUEST_SIZE:
            self._reject(RequestError("request too long"))

    def eof_received(self) -> bool:
        if not self.started:
            self._start(self.buffer)
        return True  # keep the write side open for the answer

    def _reject(self, err: RequestError) -> None:
        self.started = True
        self.server.log.warning("error parsing policy request: %s", err)
        assert self.transport is not None
        self.transport.close()

    def _start(self, data: bytes) -> None:
        try:
            request = parse_request(data)
        except RequestError as err:
            self._reject(err)
            return
        self.started = True
        self.server.spawn(self._answer(request))

    async def _answer(self, request: Request) -> None:
        assert self.transport is not None
        answer = b"result=deny\n"
        try:
            outcome = await self.server.engine.evaluate(request)
            if outcome.lines:
                answer = outcome.answer.encode()
        except Exception:  # a bug must not leave the caller waiting: deny, and say why
            self.server.log.exception("error evaluating %s", request)
        finally:
            if not self.transport.is_closing():
                self.transport.write(answer)
            self.transport.close()


class PolicyServer:
    def __init__(self, engine: PolicyEngine, log: logging.Logger) -> None:
        self.engine = engine
        self.log = log
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task that is kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle_eval(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gui: bool
    ) -> None:
        service = "policy.EvalGUI" if gui else "policy.EvalSimple"
        try:
            try:
                header, body = await _read_eval(reader)
                queried, remote = parse_eval_header(header, service)
                source, target = parse_eval_body(body)
                if gui:
                    await self._check_gui(remote, source, target)
            except RequestError as err:
                self.log.warning("invalid %s call: %s", service, err)
                return
            request = Request(source, target, queried, "", True, True)
            outcome = await self.engine.evaluate(request)
            writer.write(b"result=allow\n" if outcome.allowed else b"result=deny\n")
            await writer.drain()
        except OSError as err:
            self.log.warning("%s connection failed: %s", service, err)
        finally:
            writer.close()

    async def _check_gui(self, remote: str, source: str, target: str) -> None:
        """EvalGUI: both qubes must exist and carry `guivm-REMOTE` (policy.md §9 step 4)."""
        try:
            info = await self.engine.system_info.get()
        except SystemInfoError as err:
            raise RequestError(f"no system info: {err}") from err
        tag = "guivm-" + remote
        for name in (source, target):
            d = info.get(name)
            if d is None or tag not in d.tags:
                raise RequestError(f"{name} is not managed by {remote}")

    async def serve(self, policy_socket: str, eval_socket: str, gui_socket: str) -> None:
        """Listen on the three sockets (mode 0660, stale files removed) and serve forever."""
        loop = asyncio.get_running_loop()
        for path in (policy_socket, eval_socket, gui_socket):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        servers = [
            await loop.create_unix_server(lambda: _RequestProtocol(self), policy_socket),
            await asyncio.start_unix_server(
                lambda r, w: self.handle_eval(r, w, gui=False), eval_socket, limit=_MAX_HEADER
            ),
            await asyncio.start_unix_server(
                lambda r, w: self.handle_eval(r, w, gui=True), gui_socket, limit=_MAX_HEADER
            ),
        ]
        for path in (policy_socket, eval_socket, gui_socket):
            os.chmod(path, 0o660)
        self.log.info("policy daemon listening on %s", policy_socket)
        await asyncio.gather(*(s.serve_forever() for s in servers))
