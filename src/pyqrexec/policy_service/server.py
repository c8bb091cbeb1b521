"""The policy daemon's sockets: requests (policy.md §7) and policy.EvalSimple/EvalGUI (§9).

One task per connection, so an open ask dialog never holds up another request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

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


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """Bytes up to the empty line that ends a request, or up to EOF."""
    buffer = b""
    while (end := request_end(buffer)) is None:
        chunk = await reader.read(65536)
        if not chunk:
            return buffer
        buffer += chunk
        if len(buffer) > MAX_REQUEST_SIZE + 2:
            raise RequestError("request too long")
    return buffer[:end]


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


class PolicyServer:
    def __init__(self, engine: PolicyEngine, log: logging.Logger) -> None:
        self.engine = engine
        self.log = log

    async def handle_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            try:
                request = parse_request(await _read_request(reader))
            except RequestError as err:
                self.log.warning("error parsing policy request: %s", err)
                return
            outcome = await self.engine.evaluate(request)
            writer.write(outcome.answer.encode() if outcome.lines else b"result=deny\n")
            await writer.drain()
        except OSError as err:
            self.log.warning("policy request connection failed: %s", err)
        finally:
            writer.close()

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
        servers = []
        handlers = (
            (policy_socket, self.handle_request),
            (eval_socket, lambda r, w: self.handle_eval(r, w, gui=False)),
            (gui_socket, lambda r, w: self.handle_eval(r, w, gui=True)),
        )
        for path, handler in handlers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            server = await asyncio.start_unix_server(handler, path, limit=_MAX_HEADER)
            os.chmod(path, 0o660)
            servers.append(server)
        self.log.info("policy daemon listening on %s", policy_socket)
        await asyncio.gather(*(s.serve_forever() for s in servers))
