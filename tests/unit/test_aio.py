"""ChannelWriter: whole messages in order, and the backlog that flow control waits on
(docs/reference/protocol.md#flow-control)."""

from __future__ import annotations

import asyncio
import socket

from pyqrexec.transport.aio import ChannelWriter


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    return ours, peer


def _drain(peer: socket.socket, n: int) -> bytes:
    data = b""
    peer.settimeout(5)
    while len(data) < n:
        data += peer.recv(n - len(data))
    return data


def test_backlog_counts_posted_messages_until_the_kernel_takes_them() -> None:
    async def main() -> None:
        ours, peer = _pair()
        writer = ChannelWriter(asyncio.get_running_loop(), ours)
        messages = [bytes([i]) * 1000 for i in range(200)]
        errors: list[OSError] = []
        for m in messages:
            writer.post(m, errors.append)
        # what the kernel did not take at once is counted at once, before any task ran
        peer.setblocking(False)
        taken = peer.recv(200_000)
        assert 0 < len(taken) < 200_000
        assert writer.backlog == 200_000 - len(taken)
        await asyncio.sleep(0.05)
        assert 0 < writer.backlog < 200_000 - len(taken)
        waiting = asyncio.ensure_future(writer.ready())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        loop = asyncio.get_running_loop()
        peer.setblocking(True)
        data = await loop.run_in_executor(None, _drain, peer, 200_000 - len(taken))
        await asyncio.wait_for(waiting, 5)
        assert writer.backlog == 0
        assert taken + data == b"".join(messages)
        assert errors == []
        ours.close()
        peer.close()

    asyncio.run(main())


def test_a_post_with_nothing_queued_goes_out_at_once() -> None:
    async def main() -> None:
        ours, peer = _pair()
        writer = ChannelWriter(asyncio.get_running_loop(), ours)
        errors: list[OSError] = []
        writer.post(b"header", errors.append)
        # no task, no loop round: the bytes are in the peer's socket already
        assert writer.backlog == 0
        assert len(writer.posted) == 0
        peer.setblocking(False)
        assert peer.recv(100) == b"header"
        peer.close()
        writer.post(b"lost", errors.append)
        assert len(errors) == 1 and writer.backlog == 0
        ours.close()

    asyncio.run(main())


def test_when_ready_calls_back_once_the_channel_takes_a_header() -> None:
    async def main() -> None:
        ours, peer = _pair()
        writer = ChannelWriter(asyncio.get_running_loop(), ours)
        called: list[str] = []
        writer.when_ready(lambda: called.append("at once"))
        assert called == ["at once"]
        errors: list[OSError] = []
        for _ in range(100):
            writer.post(b"x" * 1000, errors.append)
        writer.when_ready(lambda: called.append("later"))
        await asyncio.sleep(0.05)
        assert called == ["at once"]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _drain, peer, 100_000)
        for _ in range(100):
            if len(called) == 2:
                break
            await asyncio.sleep(0.01)
        assert called == ["at once", "later"]
        writer.post(b"x" * 100_000, errors.append)
        writer.when_ready(lambda: called.append("closed"))
        writer.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert called[-1] == "closed"
        ours.close()
        peer.close()

    asyncio.run(main())


def test_ready_with_a_limit_and_close_wakes_waiters() -> None:
    async def main() -> None:
        ours, peer = _pair()
        writer = ChannelWriter(asyncio.get_running_loop(), ours)
        errors: list[OSError] = []
        for _ in range(100):
            writer.post(b"x" * 1000, errors.append)
        await asyncio.wait_for(writer.ready(1 << 20), 1)  # under the limit: at once
        waiting = asyncio.ensure_future(writer.ready())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        writer.close()
        await asyncio.wait_for(waiting, 1)
        ours.close()
        peer.close()

    asyncio.run(main())


def test_failed_sends_leave_no_backlog() -> None:
    async def main() -> None:
        ours, peer = _pair()
        peer.close()
        writer = ChannelWriter(asyncio.get_running_loop(), ours)
        errors: list[OSError] = []
        writer.post(b"lost", errors.append)
        await asyncio.wait_for(writer.ready(), 1)
        assert writer.backlog == 0
        assert len(errors) == 1
        ours.close()

    asyncio.run(main())


def test_background_tasks_are_owned_until_they_end() -> None:
    from pyqrexec.transport.aio import BackgroundTasks

    async def main() -> None:
        errors: list[BaseException] = []
        tasks = BackgroundTasks(errors.append)
        release = asyncio.Event()

        async def waits() -> None:
            await release.wait()

        async def fails() -> None:
            raise ValueError("lost otherwise")

        tasks.start(waits())
        tasks.start(fails())
        assert len(tasks) == 2  # referenced here, not only weakly by the loop
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(tasks) == 1 and [str(e) for e in errors] == ["lost otherwise"]
        release.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(tasks) == 0

        forever = tasks.start(asyncio.Event().wait())
        await tasks.cancel()
        assert forever.cancelled() and len(tasks) == 0 and len(errors) == 1

    asyncio.run(main())
