"""Small asyncio helpers shared by the daemon and the agent."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine

from .unixsock import Backoff, try_connect

__all__ = ["drain_until_eof", "ChannelWriter", "connect_unix", "open_unix", "BackgroundTasks"]


async def drain_until_eof(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                          ready: Callable[[], Awaitable[None]] | None = None) -> None:
    """Read and drop what a non-blocking socket sends until EOF or an error. `ready` is
    awaited before each read: a socket whose EOF will be reported is not read while the
    report could not be sent (docs/reference/protocol.md#flow-control)."""
    try:
        while True:
            if ready is not None:
                await ready()
            if not await loop.sock_recv(sock, 4096):
                return
    except OSError:
        return


class BackgroundTasks:
    """Tasks nobody awaits, owned by the object that starts them.

    The event loop holds only weak references to tasks, so an unreferenced one may vanish
    mid-flight; an exception in one would otherwise be reported only when it is collected,
    if at all. Each task started here is referenced until it ends, a failure is handed to
    `on_error` (by default the loop's exception handler, which logs it), and `cancel()`
    ends whatever is still running (a program's shutdown).
    """

    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.tasks)

    def start(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        err = task.exception()
        if err is None:
            return
        if self.on_error is not None:
            self.on_error(err)
        else:
            task.get_loop().call_exception_handler(
                {"message": "background task failed", "exception": err, "task": task})

    async def cancel(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ChannelWriter:
    """Serialises whole messages onto one socket shared by many tasks.

    `backlog` counts the bytes handed over and not yet taken by the kernel. Flow control
    (docs/reference/protocol.md#flow-control) waits on it: while the channel cannot take even
    a header, a program stops reading whatever would add more messages.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self._lock = asyncio.Lock()
        self.backlog = 0
        self.closed = False
        self._waiters: list[asyncio.Future[None]] = []
        #: the sends `post` started; their errors go to each post's `on_error`
        self.posted = BackgroundTasks()

    async def send(self, data: bytes) -> None:
        self.backlog += len(data)
        await self._send_counted(data)

    def post(self, data: bytes, on_error: Callable[[OSError], None]) -> None:
        """Send `data` without waiting for it; it counts in the backlog from now on (the
        task may start only after the caller has read much more). With nothing queued
        before it, it goes to the kernel at once, without a task (the usual case)."""
        if self.backlog == 0 and not self._lock.locked() and not self.closed:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as err:
                on_error(err)
                return
            if sent == len(data):
                return
            data = data[sent:]
        self.backlog += len(data)

        async def run() -> None:
            try:
                await self._send_counted(data)
            except OSError as err:
                on_error(err)

        self.posted.start(run())

    async def _send_counted(self, data: bytes) -> None:
        try:
            async with self._lock:
                if self.closed:
                    raise OSError("control channel closed")
                await self.loop.sock_sendall(self.sock, data)
        finally:
            self._sent(len(data))

    async def ready(self, limit: int = 0) -> None:
        """Return once at most `limit` bytes wait to be sent (0: the channel takes a header
        now), or once the writer is closed."""
        while self.backlog > limit and not self.closed:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            await waiter

    @property
    def takes_header(self) -> bool:
        """Nothing waits to be sent (or the writer is closed): what `ready()` waits for."""
        return self.backlog <= 0 or self.closed

    def when_ready(self, callback: Callable[[], None]) -> None:
        """`ready()` for callback code: `callback` runs from the loop once the channel takes a
        header or the writer is closed (at once when it does already)."""
        if self.takes_header:
            callback()
            return
        # woken at every send's end, not only the last one's: check again, as ready() loops
        waiter = self.loop.create_future()
        waiter.add_done_callback(lambda _: self.when_ready(callback))
        self._waiters.append(waiter)

    def close(self) -> None:
        """The channel is gone: nobody may wait for it any more."""
        self.closed = True
        self._wake()

    def _sent(self, n: int) -> None:
        self.backlog -= n
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


async def connect_unix(path: str) -> socket.socket:
    """A connected non-blocking Unix socket.

    A full listen backlog makes a non-blocking connect fail with EAGAIN (it never completes
    later), so it is retried here; asyncio's own `open_unix_connection` would take the
    unconnected socket for a connected one.
    """
    backoff = Backoff(0.001, 0.05)
    while (sock := try_connect(path, wait_for_listener=False)) is None:
        await asyncio.sleep(backoff.next() or 0.05)
    return sock


async def open_unix(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_unix_connection` that survives a full listen backlog."""
    return await asyncio.open_unix_connection(sock=await connect_unix(path))
