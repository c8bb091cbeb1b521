"""qubesd calls for asyncio programs (protocol.md §16); the format lives in `qubesd`."""

from __future__ import annotations

import asyncio

from .qubesd import MAX_RESPONSE, QubesdError, decode_response, encode_call, socket_path

__all__ = ["call_async"]


async def call_async(
    method: str, dest: str, arg: str = "", payload: bytes = b"", path: str | None = None
) -> bytes:
    """Call qubesd at `path` (default `$QUBESD_SOCKET`); the DATA of its answer."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    request = encode_call(method, dest, arg, payload)
    try:
        transport, _ = await loop.create_unix_connection(
            lambda: _CallProtocol(request, done), path or socket_path()
        )
    except OSError as err:
        raise QubesdError(f"cannot call qubesd: {err}") from err
    try:
        return decode_response(await done)
    finally:
        transport.close()


class _CallProtocol(asyncio.Protocol):
    """Sends one request, collects the response until EOF (stops one byte past the limit)."""

    def __init__(self, request: bytes, done: asyncio.Future[bytes]) -> None:
        self.request = request
        self.done = done
        self.chunks: list[bytes] = []
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport
        transport.write(self.request)
        transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > MAX_RESPONSE:
            self._finish()
            self.transport.close()

    def eof_received(self) -> bool:
        self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.done.done():
            self.done.set_exception(QubesdError(f"cannot call qubesd: {exc}"))
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(b"".join(self.chunks))
