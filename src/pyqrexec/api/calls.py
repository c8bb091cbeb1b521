"""One call in flight, as asyncio sees it (docs/client-library.md#streaming).

`ChannelCall` is the caller's end of a data channel. The protocol work is the relay's:
`Relay` keeps the send queue and reads the channel through `protocol.data` (what each
message means), `CallerOrder` decides when the STDIN EOF goes, and the helpers
`queue_opening`, `queue_eof_after_exit` and `caller_result` are the ones `qrexec-client`
and `qrexec-client-vm` run, in the same order, so the bytes on the channel are theirs.
This module connects those pieces to the event loop (readiness callbacks on the channel,
no thread) and to `asyncio.StreamReader`s, whose own flow control pauses reading the
channel while the program leaves output unread.

`LocalCall` is a dom0 -> dom0 call: the service runs as a child process, as it would if
`qrexec-client -d dom0` had become it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from types import TracebackType

from ..call.relay import Relay, caller_result, queue_eof_after_exit, queue_opening
from ..protocol.constants import PROTOCOL_VERSION, MsgType
from ..protocol.data import Action, CallerOrder, CallerStream
from ..system.environment import Environment
from ..transport import vchan
from .errors import CallAborted, CallResult, CallTimeout, SetupFailed

__all__ = ["AsyncCall", "ChannelCall", "LocalCall", "run_to_end", "LOG"]

LOG = logging.getLogger("pyqrexec.api")

#: an output stream holding more than twice this unread pauses reading the channel
#: (the CLIs' relays pause at 8 MiB of unwritten output too)
OUTPUT_LIMIT = 4 << 20
#: send() returns once at most this many pieces (half of them 64 KiB payloads) wait
_SEND_QUEUE = 64
#: after EXIT_CODE, how long the STDIN EOF may take to go out (as in the CLIs' relay)
EOF_WAIT = 10.0


def log_problem(message: str) -> None:
    LOG.warning("%s", message)


class AsyncCall:
    """A call in flight: its output streams, its input, its end.

    `stdout` and `stderr` are `asyncio.StreamReader`s (read, readline, readexactly, async
    iteration). `send` and `close_stdin` feed the remote stdin. `wait` returns the status the
    CLI would exit with. `abort` ends the call at once; the other side sees what it sees
    when a CLI is killed. Used as `async with`, the call is aborted when the block raises
    (a cancellation included) and waited for otherwise.
    """

    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader

    def __init__(self) -> None:
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._aborted = False
        #: the status the CLI would exit with, None until the call is over
        self.returncode: int | None = None

    async def send(self, data: bytes) -> None:
        """Send `data` to the remote stdin; returns once the send queue has room again.
        BrokenPipeError once stdin is closed or the service has exited."""
        raise NotImplementedError

    async def close_stdin(self) -> None:
        """End the remote stdin (an EOF). Closing it again does nothing."""
        raise NotImplementedError

    def abort(self) -> None:
        """End the call now: the channel (or the local service) goes away, `wait` raises
        CallAborted. Nothing happens once the call is over."""
        raise NotImplementedError

    async def wait(self) -> int:
        """The call's status once it is over (cancelling the wait leaves the call running)."""
        await asyncio.shield(self._done)
        if self._aborted:
            raise CallAborted("the call was aborted")
        assert self.returncode is not None
        return self.returncode

    @property
    def done(self) -> bool:
        return self._done.done()

    async def __aenter__(self) -> AsyncCall:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            await self.close_stdin()
            await self.wait()
        except BaseException:
            self.abort()
            raise


class _Pause:
    """Stands in for a transport to an `asyncio.StreamReader`: its flow control (pause past
    twice its limit, resume at the limit) pauses reading the channel."""

    def __init__(self, call: ChannelCall) -> None:
        self.call = call

    def pause_reading(self) -> None:
        self.call._set_paused(self, True)

    def resume_reading(self) -> None:
        self.call._set_paused(self, False)


async def accept_data_channel(env: Environment, vchan_dir: str, own_domain: int, remote: int,
                              port: int, timeout: float | None, failure: str,
                              status: int) -> socket.socket:
    """The data vchan of a call whose request went out: listen on (remote, port) and take
    the peer's connection; SetupFailed(`failure: why`, status) when none comes."""
    listener, path = vchan.listen(vchan_dir, own_domain, remote, port,
                                  pair_dirs=env.vchan_pair_dirs)
    try:
        return await vchan.accept_one_async(listener, path, timeout)
    except OSError as err:
        raise SetupFailed(f"{failure}: {err}", status) from err


def take_messages(relay: Relay, order: CallerOrder,
                  received: Callable[[Action, memoryview], None]) -> bool:
    """Read what the channel has and hand each message to `received`; True when the call's
    input is over: the service's EXIT_CODE came, and the STDIN EOF is queued."""
    for action, payload in relay.read_actions():
        received(action, payload)
    if relay.failed is not None:
        relay.channel_eof = True
    elif order.exit_seen:
        queue_eof_after_exit(relay, order)
        return True
    return False


class ChannelCall(AsyncCall):
    """The caller's end of a connected data channel (a non-blocking socket it now owns).

    `has_input`: False sends the STDIN EOF right after the HELLO, as a CLI with an empty
    stdin does. `no_hello_status`: the status when the service side never sends a usable
    HELLO (`qrexec-client` reports 125; None: the relay's own, 1). `on_end` runs once the
    channel is closed (the domain side closes its trigger connection there). `own_version`:
    the highest protocol version to speak (the program's `QREXEC_MAX_PROTOCOL_VERSION`).
    """

    def __init__(self, channel: socket.socket, *, has_input: bool = True,
                 no_hello_status: int | None = None,
                 on_end: Callable[[], None] | None = None,
                 own_version: int = PROTOCOL_VERSION) -> None:
        super().__init__()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._channel = channel
        self._fd = channel.fileno()
        self._relay = Relay(channel, own_version, log_problem, CallerStream)
        self._order = CallerOrder(has_input)
        self.stdout = asyncio.StreamReader(OUTPUT_LIMIT, loop=loop)
        self.stderr = asyncio.StreamReader(OUTPUT_LIMIT, loop=loop)
        self.stdout.set_transport(_Pause(self))  # type: ignore[arg-type]
        self.stderr.set_transport(_Pause(self))  # type: ignore[arg-type]
        self._paused: set[_Pause] = set()
        self._no_hello_status = no_hello_status
        self._on_end = on_end
        self._reading = False
        self._writing = False
        self._input_open = has_input
        self._stdout_ended = False
        self._stderr_ended = False
        #: the loop is over; waiting for the STDIN EOF to go out
        self._ending = False
        self._eof_timer: asyncio.TimerHandle | None = None
        #: resolved at the peer's HELLO (or the end of the call): input may go out from then
        self._started: asyncio.Future[None] = loop.create_future()
        self._space: list[asyncio.Future[None]] = []
        self._update_reading()
        self._flush()

    # -- input -----------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        if not data:
            return
        await asyncio.shield(self._started)
        if not self._input_open:
            raise BrokenPipeError("the call's stdin is closed")
        # a copy of anything mutable: the pieces are sent from this very buffer
        view = memoryview(data if isinstance(data, bytes) else bytes(data))
        self._relay.queue_payload(MsgType.DATA_STDIN, view)
        self._flush()
        while self._input_open and len(self._relay.outq) > _SEND_QUEUE:
            waiter = self._loop.create_future()
            self._space.append(waiter)
            await waiter

    async def close_stdin(self) -> None:
        await asyncio.shield(self._started)
        if not self._input_open:
            return
        self._input_open = False
        self._wake_senders()
        if not self._order.stdin_eof_sent:
            self._relay.queue_message(MsgType.DATA_STDIN)
            self._order.input_ended()
            self._flush()

    def _wake_senders(self) -> None:
        waiters, self._space = self._space, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _flush(self) -> None:
        relay = self._relay
        relay.flush()
        if relay.send_failed:
            self._input_open = False
        want = bool(relay.outq) and not relay.send_failed and not self._closed
        if want != self._writing:
            if want:
                self._loop.add_writer(self._fd, self._flush)
            else:
                self._loop.remove_writer(self._fd)
            self._writing = want
        if not self._input_open or len(relay.outq) <= _SEND_QUEUE:
            self._wake_senders()
        if self._ending and not want:
            self._close()

    # -- output ----------------------------------------------------------------------------
    @property
    def _closed(self) -> bool:
        return self._done.done()

    def _set_paused(self, who: _Pause, paused: bool) -> None:
        if paused:
            self._paused.add(who)
        else:
            self._paused.discard(who)
        self._update_reading()

    def _update_reading(self) -> None:
        want = not (self._closed or self._ending or self._relay.channel_eof or self._paused)
        if want != self._reading:
            if want:
                self._loop.add_reader(self._fd, self._readable)
            else:
                self._loop.remove_reader(self._fd)
            self._reading = want

    def _readable(self) -> None:
        relay, order = self._relay, self._order
        if take_messages(relay, order, self._received):
            self._input_open = False
        if relay.version and not self._started.done():
            queue_opening(relay, order)
            self._started.set_result(None)
        self._update_reading()
        if relay.failed is not None or self._over():
            self._finish()
        else:
            self._flush()

    def _received(self, action: Action, payload: memoryview) -> None:
        if action is Action.OUTPUT:
            self.stdout.feed_data(bytes(payload))
        elif action is Action.OUTPUT_EOF:
            self._stdout_ended = True
            self.stdout.feed_eof()
        elif action is Action.ERROR:
            # stderr bytes after the stderr EOF have no stream left to go to
            if not self._stderr_ended:
                self.stderr.feed_data(bytes(payload))
        elif action is Action.ERROR_EOF:
            self._end_stderr()
        elif action is Action.EXIT:
            self._order.exit_code(bytes(payload))

    def _end_stderr(self) -> None:
        if not self._stderr_ended:
            self._stderr_ended = True
            self.stderr.feed_eof()

    def _over(self) -> bool:
        """Before EXIT_CODE: over at the channel's EOF; after it, once stdout has ended."""
        if not self._order.exit_seen:
            return self._relay.channel_eof
        return self._stdout_ended or self._relay.channel_eof

    # -- the end ---------------------------------------------------------------------------
    def _end_streams(self) -> None:
        if not self._stdout_ended:
            self._stdout_ended = True
            self.stdout.feed_eof()
        self._end_stderr()
        self._input_open = False
        self._wake_senders()
        if not self._started.done():
            self._started.set_result(None)

    def _finish(self) -> None:
        self._ending = True
        self._update_reading()
        self._end_streams()
        relay = self._relay
        if self._order.exit_seen and relay.outq and not relay.send_failed:
            # the STDIN EOF goes out unless the service side has closed the channel; a peer
            # that neither reads nor closes is given the relay's usual wait
            self._eof_timer = self._loop.call_later(EOF_WAIT, self._close)
            self._flush()
            return
        relay.flush()
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        if self._eof_timer is not None:
            self._eof_timer.cancel()
        for remove, active in ((self._loop.remove_reader, self._reading),
                               (self._loop.remove_writer, self._writing)):
            if active:
                remove(self._fd)
        self._reading = self._writing = False
        self._channel.close()
        if not self._aborted:
            result = caller_result(self._relay, self._order.status)
            if result.no_hello and self._no_hello_status is not None:
                self.returncode = self._no_hello_status
            else:
                self.returncode = result.exit_status
        self._done.set_result(None)
        if self._on_end is not None:
            self._on_end()

    def abort(self) -> None:
        if self._closed:
            return
        self._aborted = True
        self._end_streams()
        self._close()


class LocalCall(AsyncCall):
    """dom0 -> dom0: the service as a child process of this one (or, when it could not be
    started, a call that is already over with the CLI's status and message)."""

    def __init__(self, proc: asyncio.subprocess.Process | None, status: int = 0,
                 message: str = "") -> None:
        super().__init__()
        self._proc = proc
        if proc is None:
            loop = asyncio.get_running_loop()
            self.stdout = asyncio.StreamReader(loop=loop)
            self.stderr = asyncio.StreamReader(loop=loop)
            self.stderr.feed_data(message.encode() + b"\n")
            for stream in (self.stdout, self.stderr):
                stream.feed_eof()
            self.returncode = status
            self._done.set_result(None)
            return
        assert proc.stdout is not None and proc.stderr is not None
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self._waiter = asyncio.ensure_future(self._reap(proc))

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if not self._done.done():
            # a status as a shell reports it, which is what the service's caller sees
            self.returncode = 128 - code if code < 0 else code
            self._done.set_result(None)

    async def send(self, data: bytes) -> None:
        stdin = self._proc.stdin if self._proc is not None else None
        if stdin is None or stdin.is_closing() or self.done:
            raise BrokenPipeError("the call's stdin is closed")
        stdin.write(data)
        try:
            await stdin.drain()
        except ConnectionResetError as err:
            raise BrokenPipeError(str(err)) from err

    async def close_stdin(self) -> None:
        stdin = self._proc.stdin if self._proc is not None else None
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    def abort(self) -> None:
        if self.done or self._proc is None:
            return
        self._aborted = True
        if self._proc.returncode is None:
            self._proc.kill()
        self._done.set_result(None)


async def run_to_end(start: Awaitable[AsyncCall], input: bytes | None,
                     timeout: float | None) -> CallResult:
    """Start a call, feed it `input` (None: nothing, the stdin EOF went already), read all
    of its output and wait for its end, all within `timeout` seconds (CallTimeout past it);
    the call is aborted when this is cancelled or times out."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            call = await start
    except TimeoutError:
        raise CallTimeout.after(timeout) from None
    return await _collect(call, input, deadline, timeout)


async def _collect(call: AsyncCall, input: bytes | None, deadline: float | None,
                   timeout: float | None) -> CallResult:
    out = bytearray()
    err = bytearray()

    async def drain(stream: asyncio.StreamReader, sink: bytearray) -> None:
        while chunk := await stream.read(1 << 20):
            sink += chunk

    async def feed() -> None:
        try:
            if input:
                await call.send(input)
            await call.close_stdin()
        except BrokenPipeError:
            # the service stopped reading: like a CLI whose stdin is not read
            pass

    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.gather(drain(call.stdout, out), drain(call.stderr, err), feed())
            status = await call.wait()
    except TimeoutError:
        call.abort()
        raise CallTimeout.after(timeout, bytes(out), bytes(err)) from None
    except BaseException:
        call.abort()
        raise
    return CallResult(status, bytes(out), bytes(err))
