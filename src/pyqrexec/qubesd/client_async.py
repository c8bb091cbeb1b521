"""qubesd calls for asyncio programs (docs/reference/protocol.md#qubesd-calls); the format lives in
`qubesd`.

`start_call` connects and sends before it returns (qubesd starts working at once) and is then
driven by reader/writer callbacks on a bare non-blocking socket: no task, transport or
protocol object per call, as the policy daemon makes one call per request.
"""

from __future__ import annotations

import asyncio
import socket

from .client import MAX_RESPONSE, QubesdError, decode_response, encode_call

__all__ = ["call_async", "start_call"]

_RETRY_DELAY = 0.001


async def call_async(
    method: str, dest: str, arg: str = "", payload: bytes = b"", *, path: str
) -> bytes:
    """Call qubesd at `path` (a program's `QUBESD_SOCKET`); the DATA of its answer."""
    return await start_call(method, dest, arg, payload, path=path)


def start_call(
    method: str, dest: str, arg: str = "", payload: bytes = b"", *, path: str
) -> asyncio.Future[bytes]:
    """Start a call now; the future holds the DATA of the answer or a `QubesdError`.
    Cancelling the future abandons the call."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    request = encode_call(method, dest, arg, payload)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError as err:
        done.set_exception(QubesdError(f"cannot call qubesd: {err}"))
        return done
    _Call(loop, done, request, path, sock)
    return done


class _Call:
    """Connect, send the request, shut down the write side, read to EOF (stops one byte past
    the limit, which `decode_response` rejects)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[bytes],
        request: bytes,
        path: str,
        sock: socket.socket,
    ) -> None:
        self.loop = loop
        self.done = done
        self.pending = memoryview(request)
        self.chunks: list[bytes] = []
        self.size = 0
        self.sock = sock
        sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.watching = False
        self.retry: asyncio.TimerHandle | None = None
        done.add_done_callback(self._close)  # also when cancelled
        self._connect(path)

    def _connect(self, path: str) -> None:
        self.retry = None
        try:
            self.sock.connect(path)
        except BlockingIOError:  # the listen backlog is full (Unix sockets): try again soon
            self.retry = self.loop.call_later(_RETRY_DELAY, self._connect, path)
            return
        except OSError as err:
            self._fail(err)
            return
        self._send()

    def _send(self) -> None:
        try:
            while self.pending:
                sent = self.sock.send(self.pending)
                self.pending = self.pending[sent:]
            self.sock.shutdown(socket.SHUT_WR)
        except BlockingIOError:
            if not self.watching:
                self.watching = True
                self.loop.add_writer(self.fd, self._send)
            return
        except OSError as err:
            self._fail(err)
            return
        if self.watching:
            self.loop.remove_writer(self.fd)
        self.watching = True
        self.loop.add_reader(self.fd, self._receive)

    def _receive(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as err:
            self._fail(err)
            return
        self.chunks.append(data)
        self.size += len(data)
        if data and self.size <= MAX_RESPONSE:
            return
        self._close()
        if self.done.done():
            return
        try:
            result = decode_response(b"".join(self.chunks))
        except QubesdError as err:
            self.done.set_exception(err)
        else:
            self.done.set_result(result)

    def _fail(self, err: OSError) -> None:
        self._close()
        if not self.done.done():
            self.done.set_exception(QubesdError(f"cannot call qubesd: {err}"))

    def _close(self, _: object = None) -> None:
        """Stop watching and close the socket (idempotent)."""
        if self.fd < 0:
            return
        if self.retry is not None:
            self.retry.cancel()
        if self.watching:
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
        self.fd = -1
        self.sock.close()
