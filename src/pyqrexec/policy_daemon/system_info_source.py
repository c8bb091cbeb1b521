"""System info from qubesd's `internal.GetSystemInfo`, fetched for every request
(docs/reference/policy.md#system-information).

Fetches are shared: requests that arrive while a fetch is running wait for the next one (which
starts after they arrived, so it sees every change made before them) and share it. A fetch is
sent to qubesd before `get()` returns, so qubesd works while the caller checks the policy. The
parsed result is cached for as long as qubesd's answer stays byte-identical.
"""

from __future__ import annotations

import asyncio

from ..policy.errors import SystemInfoError
from ..policy.system_info import SystemInfo
from ..qubesd.client import QubesdError
from ..qubesd.client_async import start_call

__all__ = ["SystemInfoSource"]


class SystemInfoSource:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._raw: bytes | None = None
        self._info: SystemInfo | None = None
        self._waiting: list[asyncio.Future[SystemInfo]] = []
        self._fetching = False

    def get(self) -> asyncio.Future[SystemInfo]:
        """System info fetched after this call; the future may hold a `SystemInfoError`."""
        future: asyncio.Future[SystemInfo] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if not self._fetching:
            self._start()
        return future

    def _start(self) -> None:
        self._fetching = True
        batch, self._waiting = self._waiting, []
        call = start_call("internal.GetSystemInfo", "dom0", path=self.socket_path)
        call.add_done_callback(lambda done: self._finish(done, batch))

    def _finish(self, call: asyncio.Future[bytes], batch: list[asyncio.Future[SystemInfo]]) -> None:
        self._fetching = False
        failure: SystemInfoError | None = None
        try:
            info = self._parse(call.result())
        except QubesdError as err:
            failure = SystemInfoError(str(err))
        except SystemInfoError as err:
            failure = err
        except Exception as err:  # a bug: every waiter still gets an answer
            failure = SystemInfoError(f"unexpected error: {err!r}")
        for future in batch:
            if future.done():
                continue
            if failure is None:
                future.set_result(info)
            else:
                future.set_exception(failure)
        if self._waiting:
            self._start()

    def _parse(self, raw: bytes) -> SystemInfo:
        if raw != self._raw or self._info is None:
            self._info = SystemInfo.from_json(raw)
            self._raw = raw
        return self._info
