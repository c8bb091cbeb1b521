"""The blocking API: the asyncio one, driven by a private event loop per client
(docs/client-library.md#the-blocking-clients).

A client's methods run its loop until they return, so calls in flight progress whenever
any method of the same client runs. A client belongs to one thread; it must not be used
from inside a running event loop (use the asyncio clients there).

`Dom0Client.run` into a domain takes a shorter way when no other call of the client is in
flight, with no loop to keep going: `blocking.run_in_domain`, the same messages without
asyncio's cost (about half of this process's CPU per call).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from ..system.defaults import DAEMON_SOCKET_DIR
from ..system.environment import Environment
from .blocking import run_in_domain
from .calls import AsyncCall
from .dom0 import DOM0_NAMES, AsyncDom0Client, service_command
from .domain import DEFAULT_AGENT_SOCKET, AsyncDomainClient
from .errors import CallResult

__all__ = ["Dom0Client", "DomainClient", "Call", "Stream"]

T = TypeVar("T")


class _Loop:
    """A private event loop, closed with its owner."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


class Stream:
    """A call's stdout or stderr, read blockingly. Iterating yields chunks until EOF."""

    def __init__(self, loop: _Loop, reader: asyncio.StreamReader) -> None:
        self._loop = loop
        self._reader = reader

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (-1: all until EOF); b"" at EOF."""
        return self._loop.run(self._reader.read(n))

    def readline(self) -> bytes:
        return self._loop.run(self._reader.readline())

    def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes; asyncio.IncompleteReadError at an EOF before them."""
        return self._loop.run(self._reader.readexactly(n))

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 16):
            yield chunk


class Call:
    """A call in flight, used blockingly: `stdout`, `stderr`, `send`, `close_stdin`, `wait`,
    `abort`. As a context manager it is aborted when the block raises, waited for
    otherwise. Output is read only while some method of its client runs: a program that
    sends much input without reading output can stall as with a pipe (`run` never does)."""

    def __init__(self, loop: _Loop, call: AsyncCall) -> None:
        self._loop = loop
        self._call = call
        self.stdout = Stream(loop, call.stdout)
        self.stderr = Stream(loop, call.stderr)

    @property
    def returncode(self) -> int | None:
        return self._call.returncode

    def send(self, data: bytes) -> None:
        self._loop.run(self._call.send(data))

    def close_stdin(self) -> None:
        self._loop.run(self._call.close_stdin())

    def wait(self, timeout: float | None = None) -> int:
        """The call's status; TimeoutError past `timeout` (the call goes on)."""
        return self._loop.run(asyncio.wait_for(self._call.wait(), timeout))

    def abort(self) -> None:
        self._call.abort()
        # let the loop run the callbacks the end scheduled
        self._loop.run(asyncio.sleep(0))

    def __enter__(self) -> Call:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._loop.run(self._call.__aexit__(exc_type, exc, tb))


class _Client:
    def __init__(self) -> None:
        self._loop = _Loop()
        #: the calls `start` returned, while their owner keeps them
        self._calls: weakref.WeakSet[Call] = weakref.WeakSet()

    def _in_flight(self) -> bool:
        return any(not call._call.done for call in self._calls)

    def _started(self, call: Call) -> Call:
        self._calls.add(call)
        return call

    def close(self) -> None:
        self._loop.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Dom0Client(_Client):
    """Blocking calls from dom0 (the options are `AsyncDom0Client`'s)."""

    def __init__(self, *, socket_dir: str = DAEMON_SOCKET_DIR, vchan_dir: str | None = None,
                 own_domain: int | None = None, connect_timeout: float | None = 10.0,
                 env: Environment | None = None) -> None:
        super().__init__()
        self.aio = AsyncDom0Client(socket_dir=socket_dir, vchan_dir=vchan_dir,
                                   own_domain=own_domain, connect_timeout=connect_timeout,
                                   env=env)

    def run(self, domain: str, command: str, *, input: bytes | None = None,
            timeout: float | None = None) -> CallResult:
        aio = self.aio
        if domain in DOM0_NAMES or self._in_flight():
            return self._loop.run(aio.run(domain, command, input=input, timeout=timeout))
        return run_in_domain(aio.env, aio.socket_dir, aio.vchan_dir, aio.own_domain,
                             aio.connect_timeout, domain, command, input, timeout)

    def run_service(self, domain: str, service: str, argument: str = "", *,
                    input: bytes | None = None, timeout: float | None = None) -> CallResult:
        return self.run(domain, service_command(service, argument), input=input,
                        timeout=timeout)

    def start(self, domain: str, command: str, *, stdin: bool = True) -> Call:
        return self._started(
            Call(self._loop, self._loop.run(self.aio.start(domain, command, stdin=stdin))))

    def start_service(self, domain: str, service: str, argument: str = "", *,
                      stdin: bool = True) -> Call:
        return self.start(domain, service_command(service, argument), stdin=stdin)


class DomainClient(_Client):
    """Blocking calls from inside a domain (the options are `AsyncDomainClient`'s)."""

    def __init__(self, *, agent_socket: str = DEFAULT_AGENT_SOCKET,
                 vchan_dir: str | None = None, own_domain: int | None = None,
                 connect_timeout: float | None = 120.0, env: Environment | None = None) -> None:
        super().__init__()
        self.aio = AsyncDomainClient(agent_socket=agent_socket, vchan_dir=vchan_dir,
                                     own_domain=own_domain, connect_timeout=connect_timeout,
                                     env=env)

    def call(self, target: str, service: str, *, input: bytes | None = None,
             source: str | None = None, timeout: float | None = None) -> CallResult:
        return self._loop.run(self.aio.call(target, service, input=input, source=source,
                                            timeout=timeout))

    def start(self, target: str, service: str, *, source: str | None = None,
              stdin: bool = True) -> Call:
        return self._started(Call(
            self._loop,
            self._loop.run(self.aio.start(target, service, source=source, stdin=stdin))))
