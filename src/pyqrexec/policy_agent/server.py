"""The agent's socket: one request per connection, each answered in its own task
(docs/reference/policy.md#ask-and-notify).

Several asks may be pending at once; how they are presented (in parallel or queued) is the front
end's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat

from ..transport.unixsock import listen_unix
from .frontends import Frontend
from .request import AskRequest, RequestError, checked_reply, parse_request

__all__ = ["AgentServer", "MAX_REQUEST", "remove_stale_socket"]

MAX_REQUEST = 1 << 20  # icons of every qube fit many times over


def remove_stale_socket(path: str) -> None:
    """Unlink `path` if it is a socket (left by an earlier run); anything else is left alone."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


class AgentServer:
    def __init__(self, frontend: Frontend, log: logging.Logger) -> None:
        self.frontend = frontend
        self.log = log

    async def start(self, path: str) -> asyncio.Server:
        """Listen on `path` (a stale socket there is replaced)."""
        remove_stale_socket(path)
        # made listening under another name, then renamed: whoever waits for the path to
        # appear (qrexec-host, the tests) never meets a socket that refuses connections
        umask = os.umask(0)
        os.umask(umask)
        sock = listen_unix(path, mode=0o777 & ~umask, backlog=socket.SOMAXCONN)
        return await asyncio.start_unix_server(self.handle, sock=sock)

    async def serve(self, path: str) -> None:
        server = await self.start(path)
        async with server:
            await server.serve_forever()

    async def respond(self, data: bytes) -> bytes:
        """The reply to one whole request: never raises."""
        try:
            if len(data) > MAX_REQUEST:
                raise RequestError("request too long")
            request = parse_request(data)
        except RequestError as err:
            self.log.warning("invalid policy agent request: %s", err)
            asking = data.startswith(b"policy.Ask ")
            return b"deny" if asking else b""
        if isinstance(request, AskRequest):
            try:
                reply = await self.frontend.answer(request)
            except Exception:  # a front end's failure is a deny, never a crash
                self.log.exception("error asking about %s", request.service)
                reply = "deny"
            return checked_reply(reply, request).encode("ascii")
        try:
            await self.frontend.notify(request)
        except Exception:  # errors never change the decision (docs/reference/policy.md#notify)
            self.log.exception("error showing a notification")
        return b""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = b""
            while len(data) <= MAX_REQUEST and (chunk := await reader.read(MAX_REQUEST + 1)):
                data += chunk
            writer.write(await self.respond(data))
            await writer.drain()
        except OSError as err:
            self.log.warning("policy agent connection failed: %s", err)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
