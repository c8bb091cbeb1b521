"""System info from qubesd's `internal.GetSystemInfo`, fetched for every request (policy.md §4).

Fetches are shared: requests that arrive while a fetch is running wait for the next one (which
starts after they arrived, so it sees every change made before them) and share it. The parsed
result is cached for as long as qubesd's answer stays byte-identical.
"""

from __future__ import annotations

import asyncio

from ..host.qubesd import QubesdError
from ..host.qubesd_async import call_async
from ..policy.errors import SystemInfoError
from ..policy.system_info import SystemInfo

__all__ = ["SystemInfoSource"]


class SystemInfoSource:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._raw: bytes | None = None
        self._info: SystemInfo | None = None
        self._waiting: list[asyncio.Future[SystemInfo]] = []
        self._fetching = False
        self._task: asyncio.Task[None] | None = None

    def get(self) -> asyncio.Future[SystemInfo]:
        """System info fetched after this call; the future may hold a `SystemInfoError`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SystemInfo] = loop.create_future()
        self._waiting.append(future)
        if not self._fetching:
            self._fetching = True
            self._task = loop.create_task(self._serve_waiters())
        return future

    async def _serve_waiters(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    info = await self._fetch()
                except SystemInfoError as err:
                    for future in batch:
                        if not future.done():
                            future.set_exception(err)
                else:
                    for future in batch:
                        if not future.done():
                            future.set_result(info)
        finally:
            self._fetching = False

    async def _fetch(self) -> SystemInfo:
        try:
            raw = await call_async("internal.GetSystemInfo", "dom0", path=self.socket_path)
        except QubesdError as err:
            raise SystemInfoError(str(err)) from err
        if raw != self._raw or self._info is None:
            self._info = SystemInfo.from_json(raw)
            self._raw = raw
        return self._info
