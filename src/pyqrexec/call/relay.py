"""The data-channel relay: one call's bytes between a vchan and local fds
(docs/reference/protocol.md#data-channel).

This is the hot path, so it is a plain poll() loop rather than asyncio: local input is read
into one reused buffer per stream and sent as many 64 KiB messages with a single
`sendmsg` (no copies); channel input is read in large `recv_into` calls and the payloads
are written straight from that buffer, each run of them bound for one writer with a single
`writev`. Copies happen only when a local writer is slow, in which case the bytes that did
not fit are queued (and reading the channel pauses past a limit).
A service's stdout, once it has proved to be bulk, does not pass through this process at
all: it is spliced from its socket into a pipe and from the pipe into the channel (`_Piped`),
only the 8-byte headers written from here. A caller's stdin that is a pipe (`head |
qrexec-client ...`) is spliced into the channel straight from that pipe the same way. Where
splice() does not work, both are read as before.

The meaning of each received message comes from `protocol.data`; this module only moves
bytes and keeps the end-of-call ordering of docs/reference/protocol.md#end-of-a-call.

Size: the caller's loop (`_Caller`) and the service's (`_Service`) are separate classes, each
tested on socket pairs, but they share the stream helpers (`_read_into`, `_write_sink`,
`_poll_sources`, ...) and poll constants of the hot path as this module's globals; split
into modules, those would become a dozen cross-module imports of private helpers, and the
clients would load two more modules on their start-up path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import sys

from ..protocol.constants import MAX_DATA_CHUNK_V3, MsgType
from ..protocol.data import (
    Action,
    CallerOrder,
    CallerStream,
    DataChannel,
    ServiceOrder,
    ServiceStream,
)
from ..protocol.errors import RemoteProtocolError
from ..protocol.wire import HEADER, exit_code_payload, hello
from ..transport.sockets import SHUT_WR
from ..transport.unixsock import tune
from .traffic import Traffic

# On the clients' start-up path (docs/architecture.md#code-shape): `typing` would cost ~3 ms,
# `signal` and `socket` their enums (~4 ms), `collections` ~1 ms; so the C modules under
# them. mypy takes TYPE_CHECKING as true and checks against the full ones.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    import socket
    from collections import deque
    from collections.abc import Callable
else:
    import _signal
    from _collections import deque

__all__ = [
    "SingleSocket", "Source", "Sink", "Relay", "CallerResult", "caller_result",
    "queue_opening", "queue_eof_after_exit", "run_caller", "run_service", "unsafe_filter",
]

_HDR = HEADER
_RECV_SIZE = 1 << 20
_READ_BATCH = 16
#: what a source reads (or splices) at most at once
_SOURCE_SIZE = _READ_BATCH * 65536
#: the first buffer of a lean channel or source (`_first_buffer`): a page, which holds all
#: a short call's messages (HELLO, EOFs, EXIT_CODE: tens of bytes)
_FIRST_SIZE = 4096
_PENDING_LIMIT = 8 << 20
_WAKE_MS = 10_000
#: bytes a batching relay moves before it turns to SCHED_BATCH (`_batch_scheduling`): a
#: short call stays an interactive task, whose wake-ups are served at once on a busy host
_BATCH_AFTER = 1 << 20
#: bytes a source (a service's stdout, a caller's piped stdin) delivers by plain reads before
#: the relay splices it (`_Piped`): splicing costs a system call more per message, which
#: only bulk data pays back
_SPLICE_AFTER = 1 << 20
_SPLICE_FLAGS = os.SPLICE_F_NONBLOCK
#: splice() failing with these means "not for this fd or in this process": read as before
_NO_SPLICE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP})

_POLLIN = select.POLLIN | select.POLLPRI
_POLLOUT = select.POLLOUT
_POLLERR = select.POLLERR | select.POLLHUP | select.POLLNVAL
#: ioctl for the bytes a pipe holds (Linux's FIONREAD; `termios` would load a module for it)
_FIONREAD = 0x541B
#: iovecs one writev takes (Linux's UIO_MAXIOV); a peer's tiny messages may make more
_IOV_MAX = 1024


def _unbacked(size: int) -> memoryview:
    """`size` writable bytes whose pages take memory only once bytes arrive in them: a
    bytearray is zeroed on creation, and a short call would pay for megabytes it never
    uses (the clients' and call processes' resident size)."""
    import mmap  # lazy: 0.15 ms of every short call's start (`_first_buffer`)

    return memoryview(mmap.mmap(-1, size))


def _first_buffer(size: int, lean: bool) -> memoryview:
    """The buffer a channel (`size` = `_RECV_SIZE`) or a source (`_SOURCE_SIZE`) starts with.

    `lean`, in a process that relays one call at a time (a client, `run_caller`'s
    `one_call`; a call process, `run_service`): a page-sized bytearray, which is all a
    short call needs; the first read that fills it moves on to the mapped buffer, with the
    part of a message it holds. A short call then neither loads `mmap` nor maps, faults in
    and unmaps the buffer (a call worker, which reuses its heap from call to call, spends
    0.09 ms less CPU per call; a client's page faults and exit cost ~1.6 us a page). A
    process with many calls in flight (the client library) gets the mapped buffer at once.
    """
    return memoryview(bytearray(_FIRST_SIZE)) if lean else _unbacked(size)


_SAFE_BYTES = bytes(range(0x20, 0x7F)) + b"\t\n\r\b\a"
_FILTER_TABLE = bytes(b if b in _SAFE_BYTES else 0x5F for b in range(256))


def unsafe_filter(data: bytes | memoryview) -> bytes:
    """Every byte outside 0x20-0x7E except TAB, LF, CR, BS, BEL becomes `_`
    (docs/reference/cli.md#qrexec-client -t/-T)."""
    return bytes(data).translate(_FILTER_TABLE)


def _set_nonblocking(fd: int) -> None:
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    except OSError:
        pass


def _batch_scheduling() -> None:
    """Run this relay as SCHED_BATCH, which a woken task uses to wait for its turn instead of
    preempting the running one (best effort; nothing is started from a relay afterwards).

    A program writing into the relay in small chunks (`head`, `cat`: 4-8 KiB) otherwise wakes
    it and is preempted on every write when both share a scheduling group, as an unprivileged
    agent's service and its handler do (same session, hence same autogroup): each wake-up
    then moves ~10 KiB instead of ~30 KiB. Measured on a busy 2-CPU host, 20 % more from an
    unprivileged agent's service; a program in a session (and group) of its own, as a root
    agent's services are, gains nothing and its relay lost 15 %: it is not batched."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):
        pass


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _grow_pipe(fd: int) -> None:
    """Let a pipe hold 1 MiB so one read can fill a whole batch (best effort)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _RECV_SIZE)
    except (OSError, AttributeError):
        pass


class SingleSocket:
    """SIGUSR1 from the process behind a relay: "use my stdin socket both ways"
    (docs/reference/protocol.md#end-of-a-call).

    Installed before the process starts (it may signal at once); the wake-up pipe makes the
    relay's poll() return so the switch happens promptly. Only the first signal counts.
    """

    def __init__(self) -> None:
        self.requested = False
        self.fd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(wfd)
        _signal.signal(_signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.requested = True

    def drain(self) -> None:
        try:
            while os.read(self.fd, 64):
                pass
        except OSError:
            pass

    def close(self) -> None:
        """Give SIGUSR1 and the wake-up fd back: a call process may serve another call
        (docs/architecture.md#the-call-spawner)."""
        _signal.signal(_signal.SIGUSR1, _signal.SIG_DFL)
        os.close(_signal.set_wakeup_fd(-1))
        os.close(self.fd)


class Source:
    """A local fd whose bytes become messages of `msgtype`; EOF becomes an empty one."""

    __slots__ = ("fd", "msgtype", "sock", "eof", "inflight", "buf", "stopped", "pipe",
                 "splice_after", "direct")

    def __init__(self, fd: int, msgtype: int, sock: socket.socket | None = None, *,
                 lean: bool = False) -> None:
        self.fd = fd
        self.msgtype = msgtype
        #: the socket object owning `fd`, if any (kept alive; used for shutdown)
        self.sock = sock
        self.eof = False
        #: messages of this stream queued on the channel and not yet fully sent
        self.inflight = 0
        #: what plain reads go into: `_first_buffer()`, then `_unbacked(_SOURCE_SIZE)` once
        #: a read filled a smaller one
        self.buf = _first_buffer(_SOURCE_SIZE, lean)
        #: stop reading without sending EOF (e.g. exit code seen)
        self.stopped = False
        #: (read end, write end) of the pipe payloads are spliced through, once in use
        self.pipe: tuple[int, int] | None = None
        #: bytes to read plainly before splicing; None: never splice (nor for a source
        #: whose bytes are also copied elsewhere, the service's stderr)
        self.splice_after: int | None = None
        #: the fd is a pipe only this relay reads (a caller's stdin): its bytes are spliced
        #: from it to the channel, without a pipe of our own between
        self.direct = False

    def close_pipe(self) -> None:
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None


class _Piped:
    """An output-queue item: `left` payload bytes waiting in a pipe, for splice() into the
    channel: the source's own pipe (a service's stdout socket was spliced into it), or the
    source itself when it is a pipe (a caller's stdin). The bytes reach the channel without
    being copied through this process. Measured on Linux 6.18, per GiB of service output: a
    third less CPU for the relay (0.12-0.17 s), of which the channel's reader pays back
    ~0.1 s, since it now frees the service's pages; what counts is that the relay keeps up
    with the service. A caller's piped stdin went 20-30 % faster (bench/throughput.py)."""

    __slots__ = ("fd", "left")

    def __init__(self, fd: int, left: int) -> None:
        self.fd = fd
        self.left = left


class Sink:
    """A local fd the relay writes received payloads to."""

    __slots__ = ("fd", "sock", "pending", "pending_size", "closed", "closing",
                 "shutdown_only", "filter")

    def __init__(self, fd: int, sock: socket.socket | None = None, shutdown_only: bool = False,
                 filter: bool = False) -> None:
        self.fd = fd
        self.sock = sock
        self.pending: deque[bytes] = deque()
        self.pending_size = 0
        self.closed = False
        #: close once pending bytes are written
        self.closing = False
        #: a socket end is shut down for writing instead of being closed
        self.shutdown_only = shutdown_only
        self.filter = filter


class Relay:
    """State shared by the caller and service loops: the channel and its send queue."""

    def __init__(self, channel: socket.socket, own_version: int, log: Callable[[str], None],
                 stream_type: type[CallerStream] | type[ServiceStream],
                 hello_sent: bool = False, traffic: Traffic | None = None,
                 batch: bool = False, lean: bool = False):
        self.channel = channel
        #: bytes still to move before SCHED_BATCH; None: not (or already) batching
        self.batch_after: int | None = _BATCH_AFTER if batch else None
        self.traffic = Traffic() if traffic is None else traffic
        #: what the peer sends and what it means (`protocol.data`)
        self.incoming = DataChannel(stream_type, own_version,
                                    buffer=_first_buffer(_RECV_SIZE, lean))
        #: the channel is read into a small first buffer until a read fills it
        self.first_buffer = lean
        self.chfd = channel.fileno()
        channel.setblocking(False)
        self.log = log
        #: (data, source or None, last piece of a message) waiting to be sent, in order
        self.outq: deque[tuple[memoryview | _Piped, Source | None, bool]] = deque()
        self.send_failed = False
        self.channel_eof = False
        #: how the peer broke the channel's rules (nothing more is read), None while it has not
        self.failed: str | None = None
        if not hello_sent:
            self._queue(memoryview(hello(own_version)), None, True)

    @property
    def version(self) -> int:
        """The negotiated version, 0 until the peer's HELLO."""
        return self.incoming.version

    @property
    def limit(self) -> int:
        return self.incoming.limit

    # -- sending -------------------------------------------------------------------------
    def _queue(self, data: memoryview | _Piped, src: Source | None, last: bool) -> None:
        self.outq.append((data, src, last))

    def queue_message(self, msgtype: int, payload: bytes = b"") -> None:
        self._queue(memoryview(_HDR.pack(msgtype, len(payload)) + payload), None, True)

    def queue_from_source(self, src: Source, n: int) -> None:
        """Queue `n` bytes that were read into `src.buf` as messages of the chunk limit."""
        self.queue_payload(src.msgtype, memoryview(src.buf)[:n], src)

    def queue_payload(self, msgtype: int, view: memoryview, src: Source | None = None) -> None:
        """Queue `view` (not copied: it must stay unchanged until sent) as messages of
        `msgtype` within the chunk limit; each counts in `src.inflight` until sent."""
        for off, size in self._chunks(len(view)):
            self._queue_message(msgtype, view[off : off + size], size, src)

    def queue_piped(self, src: Source, pipe: int, n: int) -> None:
        """Queue `n` bytes that were spliced into `pipe` as messages of `src.msgtype`."""
        for _off, size in self._chunks(n):
            self._queue_message(src.msgtype, _Piped(pipe, size), size, src)

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        """(offset, size) of each message `n` payload bytes make, counted as sent."""
        limit = self.limit
        self.traffic.sent += n
        self._moved(n)
        return [(off, min(limit, n - off)) for off in range(0, n, limit)]

    def _queue_message(self, msgtype: int, payload: memoryview | _Piped, size: int,
                       src: Source | None) -> None:
        self._queue(memoryview(_HDR.pack(msgtype, size)), None, False)
        self._queue(payload, src, True)
        if src is not None:
            src.inflight += 1

    def _moved(self, n: int) -> None:
        if self.batch_after is None:
            return
        self.batch_after -= n
        if self.batch_after <= 0:
            self.batch_after = None
            _batch_scheduling()

    def flush(self) -> None:
        """Send what the socket takes now (non-blocking): the pieces in memory with one
        sendmsg, up to a piece waiting in a pipe, which goes by splice."""
        q = self.outq
        while q and not self.send_failed:
            first = q[0][0]
            try:
                if isinstance(first, _Piped):
                    try:
                        sent = os.splice(first.fd, self.chfd, first.left, flags=_SPLICE_FLAGS)
                    except OSError as err:
                        if err.errno not in _NO_SPLICE:
                            raise
                        self._unsplice(first.fd)
                        continue
                    if not sent:  # not reached: the pipe holds these bytes
                        raise OSError(errno.EPIPE, "pipe ran dry")
                else:
                    sent = self.channel.sendmsg(self._iov())
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:
                self.send_failed = True
                self._drop_queue()
                return
            self._sent(sent)

    def _unsplice(self, fd: int) -> None:
        """splice() into the channel was refused (a kernel or a system-call filter): the
        payloads queued in pipe `fd` are read out and sent as plain data, in their order,
        and their source reads plainly from now on."""
        q = self.outq
        for i, (data, src, last) in enumerate(q):
            if isinstance(data, _Piped) and data.fd == fd:
                q[i] = (memoryview(_read_exactly(fd, data.left)), src, last)
                if src is not None:
                    src.splice_after = None
                    src.direct = False

    def _iov(self) -> list[memoryview]:
        iov: list[memoryview] = []
        for data, _src, _last in self.outq:
            if isinstance(data, _Piped) or len(iov) == 512:
                break
            iov.append(data)
        return iov

    def _sent(self, sent: int) -> None:
        q = self.outq
        while sent:
            data, src, last = q[0]
            size = data.left if isinstance(data, _Piped) else len(data)
            if sent >= size:
                sent -= size
                q.popleft()
                if src is not None and last:
                    src.inflight -= 1
            elif isinstance(data, _Piped):
                data.left -= sent
                sent = 0
            else:
                q[0] = (data[sent:], src, last)
                sent = 0

    def drop_unsent(self) -> None:
        """Forget queued messages except the first (which may be partly sent already).
        Only a caller drops, and only once it reads no more input: a `_Piped` payload
        dropped here leaves its bytes in the caller's stdin pipe, unread, as a plain
        caller leaves what it did not read."""
        q = self.outq
        keep = 0
        while keep < len(q) and not q[keep][2]:
            keep += 1
        keep += 1
        while len(q) > keep:
            _data, src, last = q.pop()
            if src is not None and last:
                src.inflight -= 1

    def _drop_queue(self) -> None:
        for _data, src, last in self.outq:
            if src is not None and last:
                src.inflight -= 1
        self.outq.clear()

    # -- receiving -----------------------------------------------------------------------
    def read_actions(self) -> list[tuple[Action, memoryview]]:
        """Read the channel: what each complete message means (views valid until the next
        call). When the peer broke the channel's rules, the messages before that come back
        and `failed` says how; an EOF sets `channel_eof`."""
        free = self.incoming.free_space()
        if not free:  # not reached: every complete message is taken out at once
            return []
        try:
            n = self.channel.recv_into(free)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            n = 0
        if n == 0:
            self.channel_eof = True
            return []
        self.incoming.received(n)
        self._moved(n)
        actions: list[tuple[Action, memoryview]] = []
        try:
            actions.extend(self.incoming.actions())
        except RemoteProtocolError as exc:
            self.failed = str(exc)
            self.log(f"data channel broken: {exc}")
        if self.first_buffer and n == len(free):
            # more is coming than a short call's messages: the views above keep the old one
            self.first_buffer = False
            self.incoming.use_buffer(_unbacked(_RECV_SIZE))
        for warning in self.incoming.take_warnings():
            self.log(warning)
        self.traffic.received += sum(len(p) for a, p in actions if a is Action.OUTPUT)
        return actions


def _splice_in(src: Source, relay: Relay) -> int | None:
    """For a source past `splice_after`: splice what it has into its pipe (made on first
    use) and queue it; like `_read_into`, or None when splicing does not apply or does not
    work here (from then on: reading as before)."""
    if relay.limit < MAX_DATA_CHUNK_V3:
        # a splice per 4 KiB message costs more than the copy it saves
        src.splice_after = None
        return None
    if src.direct:
        n = _available(src.fd)
        if n <= 0:
            return None  # a plain read tells an EOF apart (or takes what came meanwhile)
        n = min(n, _SOURCE_SIZE)
        relay.queue_piped(src, src.fd, n)
        return n
    if src.pipe is None:
        try:
            src.pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            src.splice_after = None
            return None
        _grow_pipe(src.pipe[1])
    rfd, wfd = src.pipe
    try:
        n = os.splice(src.fd, wfd, _SOURCE_SIZE, flags=_SPLICE_FLAGS)
    except (BlockingIOError, InterruptedError):
        return -1
    except OSError as err:
        if err.errno in _NO_SPLICE:
            src.splice_after = None
            src.close_pipe()
            return None
        return 0
    if n:
        relay.queue_piped(src, rfd, n)
    return n


def _read_exactly(fd: int, size: int) -> bytes:
    """`size` bytes a pipe is known to hold."""
    chunks = []
    while size:
        got = os.read(fd, size)
        if not got:
            raise OSError(errno.EPIPE, "pipe ran dry")
        chunks.append(got)
        size -= len(got)
    return b"".join(chunks)


def _available(fd: int) -> int:
    """Bytes waiting in pipe `fd` (FIONREAD), 0 when it cannot tell."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, _FIONREAD, bytes(4)), sys.byteorder)
    except OSError:
        return 0


def _read_into(src: Source) -> int:
    """Read into the source's buffer; -1 = nothing now, 0 = EOF."""
    try:
        if src.sock is not None:
            return src.sock.recv_into(src.buf)
        return os.readv(src.fd, [src.buf])
    except (BlockingIOError, InterruptedError):
        return -1
    except OSError as err:
        if err.errno == errno.EAGAIN:
            return -1
        return 0


def _write_sink(sink: Sink, pieces: list[memoryview]) -> None:
    """Write now what the fd takes of `pieces`, with as few writev calls as the iovec limit
    allows; queue the rest (copied: the views go stale with the next read)."""
    if sink.closed:
        return
    data: list[memoryview | bytes] = list(pieces)
    if sink.filter:
        data = [unsafe_filter(piece) for piece in data]
    start = 0
    while start < len(data) and not sink.pending:
        batch = data[start : start + _IOV_MAX]
        try:
            n = os.writev(sink.fd, batch)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            _close_sink(sink)
            return
        for piece in batch:
            if n < len(piece):
                break
            n -= len(piece)
            start += 1
        else:
            continue  # all of it went: on to the next batch
        data[start] = data[start][n:]
        break
    for piece in data[start:]:
        chunk = bytes(piece)
        sink.pending.append(chunk)
        sink.pending_size += len(chunk)


def _deliver(actions: list[tuple[Action, memoryview]], sink_of: Callable[[Action], Sink | None],
             handle: Callable[[Action, memoryview], None]) -> None:
    """Act on what the channel said, in order: each run of payloads bound for one sink
    (`sink_of`) is written with one writev, the other actions go to `handle`. A 1 MiB read
    holds 16 messages of 64 KiB: one write each woke the reader 16 times as often."""
    run: list[memoryview] = []
    run_sink: Sink | None = None
    for action, payload in actions:
        sink = sink_of(action)
        if sink is None or sink is not run_sink:
            if run_sink is not None:
                _write_sink(run_sink, run)
            run, run_sink = [], sink
        if sink is None:
            handle(action, payload)
        else:
            run.append(payload)
    if run_sink is not None:
        _write_sink(run_sink, run)


def _drain_sink(sink: Sink) -> None:
    while sink.pending and not sink.closed:
        chunk = sink.pending[0]
        try:
            n = os.write(sink.fd, chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            _close_sink(sink)
            return
        sink.pending_size -= n
        if n == len(chunk):
            sink.pending.popleft()
        else:
            sink.pending[0] = chunk[n:]
    if not sink.pending and sink.closing:
        _close_sink(sink)


def _close_sink(sink: Sink) -> None:
    if sink.closed:
        return
    sink.closed = True
    sink.pending.clear()
    sink.pending_size = 0
    if sink.sock is not None and sink.shutdown_only:
        try:
            sink.sock.shutdown(SHUT_WR)
        except OSError:
            pass
    elif sink.sock is not None:
        sink.sock.close()
    else:
        try:
            os.close(sink.fd)
        except OSError:
            pass


def _end_sink(sink: Sink) -> None:
    """EOF for a sink: close it once its queued bytes are written."""
    sink.closing = True
    _drain_sink(sink)


def _poll_sources(
    poller: select.poll, relay: Relay, sources: list[Source], sinks: list[Sink],
    extra: dict[int, int], paused: bool,
) -> dict[int, int]:
    fds: dict[int, int] = dict(extra)
    if relay.version and not relay.send_failed:
        for src in sources:
            if not src.eof and not src.stopped and src.inflight == 0:
                fds[src.fd] = fds.get(src.fd, 0) | _POLLIN
    for sink in sinks:
        if sink.pending and not sink.closed:
            fds[sink.fd] = fds.get(sink.fd, 0) | _POLLOUT
    ch = 0
    if not relay.channel_eof and not paused:
        ch |= _POLLIN
    if relay.outq and not relay.send_failed:
        ch |= _POLLOUT
    if ch:
        fds[relay.chfd] = fds.get(relay.chfd, 0) | ch
    for fd, ev in fds.items():
        poller.register(fd, ev)
    try:
        ready = poller.poll(_WAKE_MS)
    except InterruptedError:
        ready = []
    for fd in fds:
        poller.unregister(fd)
    return dict(ready)


def _source_readable(src: Source, ready: dict[int, int]) -> bool:
    """Whether to read `src` after this poll(). Never while views of its buffer wait to be
    sent: a hang-up is reported on an fd polled only for writing too (a single socket's, both
    a source and a sink), and reading then would overwrite the bytes still queued."""
    return (bool(ready.get(src.fd, 0) & (_POLLIN | _POLLERR)) and not src.eof
            and not src.stopped and src.inflight == 0)


def _pump_source(relay: Relay, src: Source,
                 copy: Callable[[bytes], None] | None = None) -> bool:
    """Read what `src` has and queue it (EOF: the empty message); `copy` also gets the bytes.
    True when that was the EOF."""
    after = src.splice_after
    n = None if after is None or after > 0 else _splice_in(src, relay)
    if n is None:
        n = _read_into(src)
        if n > 0:
            if copy is not None:
                copy(bytes(src.buf[:n]))
            relay.queue_from_source(src, n)
            if src.splice_after is not None:
                src.splice_after -= n
            if n == len(src.buf) < _SOURCE_SIZE:
                # a full first buffer: the queued views keep it, reads go to a large one
                src.buf = _unbacked(_SOURCE_SIZE)
    if n == 0:
        src.eof = True
        relay.queue_message(src.msgtype)
        return True
    return False


class CallerResult:
    __slots__ = ("status", "no_hello", "broken")

    def __init__(self, status: int | None, *, no_hello: bool = False,
                 broken: bool = False) -> None:
        #: remote status, None when the channel closed before EXIT_CODE
        self.status = status
        #: the peer's HELLO never came or was unusable (a set-up failure)
        self.no_hello = no_hello
        #: the peer broke the channel's rules (docs/reference/protocol.md#data-messages: the caller
        #: exits 1)
        self.broken = broken

    @property
    def exit_status(self) -> int:
        """The caller's own exit status for this result (docs/reference/protocol.md#data-messages,
        docs/reference/protocol.md#caller-exit-status); qrexec-client reports
        a missing HELLO as a set-up failure instead."""
        if self.broken or self.no_hello:
            return 1
        return 255 if self.status is None else self.status & 0xFF


def run_caller(
    channel: socket.socket,
    own_version: int,
    local_in: int | None,
    local_out: int | None,
    log: Callable[[str], None],
    *,
    in_sock: socket.socket | None = None,
    out_sock: socket.socket | None = None,
    prefix: bytes = b"",
    filter_stdout: bool = False,
    filter_stderr: bool = False,
    stderr_fd: int = 2,
    local_done: Callable[[], bool] | None = None,
    local_wait_fd: int | None = None,
    stop_input_on_exit: bool = True,
    single_socket: SingleSocket | None = None,
    one_call: bool = False,
) -> CallerResult:
    """Caller side of docs/reference/protocol.md#end-of-a-call until the call is over; returns the
    remote status. `one_call`: this process is a client that makes this one call and only
    relays from now on (qrexec-client, qrexec-client-vm): it may run as SCHED_BATCH once the
    call moves bulk data (`_batch_scheduling`), and its channel and stdin start with small
    buffers (`_first_buffer`); never for a relay run inside a program that does other work
    (a test, a library user)."""
    relay = Relay(channel, own_version, log, CallerStream, batch=one_call, lean=one_call)
    src: Source | None = None
    if local_in is not None:
        _set_nonblocking(local_in)
        _grow_pipe(local_in)
        src = Source(local_in, MsgType.DATA_STDIN, sock=in_sock, lean=one_call)
        if in_sock is None and _is_pipe(local_in):
            src.direct = True
            src.splice_after = _SPLICE_AFTER
    out: Sink | None = None
    if local_out is not None:
        _set_nonblocking(local_out)
        out = Sink(local_out, sock=out_sock, shutdown_only=out_sock is not None,
                   filter=filter_stdout)
    caller = _Caller(relay, src, out, Sink(stderr_fd, filter=filter_stderr),
                     CallerOrder(local_in is not None, prefix))
    caller.out_sock = out_sock
    caller.local_done = local_done
    caller.local_wait_fd = local_wait_fd
    caller.stop_input_on_exit = stop_input_on_exit
    caller.single_socket = single_socket
    return caller.run()


class _Caller:
    """The caller's loop: one poll() round per `step`; `order` decides what goes when."""

    def __init__(self, relay: Relay, src: Source | None, out: Sink | None, err: Sink,
                 order: CallerOrder) -> None:
        self.relay = relay
        self.src = src
        self.sources = [src] if src is not None else []
        self.out = out
        self.err = err
        self.sinks = [s for s in (out, err) if s is not None]
        self.order = order
        self.started = False
        self.out_sock: socket.socket | None = None
        self.local_done: Callable[[], bool] | None = None
        self.local_wait_fd: int | None = None
        self.stop_input_on_exit = True
        self.single_socket: SingleSocket | None = None
        self.poller = select.poll()

    def run(self) -> CallerResult:
        relay = self.relay
        while True:
            relay.flush()
            self._start()
            if self._over():
                break
            ready = self._poll()
            if self._step(ready):
                break
        self._finish()
        return self._result()

    def _start(self) -> None:
        """Once the HELLO fixed the version: the prefix data, and the EOF without input."""
        if self.started or not self.relay.version:
            return
        self.started = True
        if queue_opening(self.relay, self.order):
            self.relay.flush()

    def _over(self) -> bool:
        """After EXIT_CODE: over once the output is written out and the local program (if
        any) is done; before it: over at the channel's EOF."""
        relay, out = self.relay, self.out
        if not self.order.exit_seen:
            return relay.channel_eof
        out_done = out is None or out.closed or relay.channel_eof
        if out is not None and relay.channel_eof and not out.closed:
            _end_sink(out)
            out_done = out.closed or not out.pending
        return out_done and not self.err.pending and (
            self.local_done is None or self.local_done())

    def _poll(self) -> dict[int, int]:
        relay = self.relay
        paused = self.out is not None and self.out.pending_size > _PENDING_LIMIT
        extra: dict[int, int] = {}
        if self.local_wait_fd is not None and self.order.exit_seen:
            extra[self.local_wait_fd] = _POLLIN
        if self.single_socket is not None:
            extra[self.single_socket.fd] = _POLLIN
        return _poll_sources(self.poller, relay, self.sources, self.sinks, extra,
                             paused and not relay.channel_eof)

    def _step(self, ready: dict[int, int]) -> bool:
        """Serve what poll() found ready; True when the peer broke the channel's rules."""
        relay = self.relay
        self._single_socket(ready)
        for sink in self.sinks:
            if sink.pending and ready.get(sink.fd, 0) & (_POLLOUT | _POLLERR):
                _drain_sink(sink)
        if relay.outq and ready.get(relay.chfd, 0) & (_POLLOUT | _POLLERR):
            relay.flush()
        for s in self.sources:
            if _source_readable(s, ready) and _pump_source(relay, s):
                # queued now: an exit code read below must not queue another
                self.order.input_ended()
        if ready.get(relay.chfd, 0) & (_POLLIN | _POLLERR) and not relay.channel_eof:
            _deliver(relay.read_actions(), self._sink_of, self._received)
            if relay.failed is not None:
                relay.channel_eof = True
                return True
            if self.order.exit_seen:
                self._after_exit()
        return False

    def _after_exit(self) -> None:
        queue_eof_after_exit(self.relay, self.order)
        if self.stop_input_on_exit and self.src is not None:
            self.src.stopped = True

    def _single_socket(self, ready: dict[int, int]) -> None:
        single = self.single_socket
        if single is None or not ready.get(single.fd):
            return
        single.drain()
        if single.requested and self.src is not None and self.out_sock is not None:
            _use_single_socket(self.src, self.out_sock)
            self.single_socket = None

    def _sink_of(self, action: Action) -> Sink | None:
        """Where the payload of `action` is written (None: it is not output)."""
        if action is Action.OUTPUT:
            return self.out
        return self.err if action is Action.ERROR else None

    def _received(self, action: Action, payload: memoryview) -> None:
        if action is Action.OUTPUT_EOF and self.out is not None:
            _end_sink(self.out)
        elif action is Action.EXIT:
            self.order.exit_code(bytes(payload))

    def _finish(self) -> None:
        relay = self.relay
        if self.order.exit_seen and relay.outq and not relay.send_failed:
            # the STDIN EOF of step 3 goes out unless the service side has closed the
            # channel; a peer that neither reads nor closes is given the usual 10 s
            relay.channel.settimeout(_WAKE_MS / 1000)
            relay.flush()
            relay.channel.setblocking(False)
        else:
            relay.flush()
        # drain what is left to write locally (bounded by the peer having finished)
        _finish_sinks(self.sinks)

    def _result(self) -> CallerResult:
        return caller_result(self.relay, self.order.status)


def queue_opening(relay: Relay, order: CallerOrder) -> bool:
    """Once the HELLO fixed the version: queue the prefix data, and the STDIN EOF when there
    is no input. True when prefix data was queued."""
    prefix = bool(order.prefix)
    for payload in order.opening(relay.limit):
        relay.queue_message(MsgType.DATA_STDIN, payload)
    return prefix


def queue_eof_after_exit(relay: Relay, order: CallerOrder) -> None:
    """After the service's EXIT_CODE: input queued for a service that has exited is useless,
    the STDIN EOF goes right after the message being sent (reference: End of a call)."""
    if not relay.send_failed and order.eof_after_exit():
        relay.drop_unsent()
        relay.queue_message(MsgType.DATA_STDIN)


def caller_result(relay: Relay, status: int | None) -> CallerResult:
    """How a caller's call ended, once its loop is over (logging what went wrong)."""
    if relay.version == 0:
        relay.log("data channel: no usable HELLO from the service side")
        return CallerResult(None, no_hello=True)
    if relay.failed is not None:
        return CallerResult(status, broken=True)
    if status is None:
        relay.log("vchan connection closed early")
    return CallerResult(status)


def _finish_sinks(sinks: list[Sink]) -> None:
    for sink in sinks:
        if sink.pending and not sink.closed:
            # blocking flush: the call is over, nothing else to service
            try:
                fl = fcntl.fcntl(sink.fd, fcntl.F_GETFL)
                fcntl.fcntl(sink.fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
            except OSError:
                pass
            _drain_sink(sink)


class ServiceEnd:
    """What the service side relays: the started process or socket."""

    def __init__(
        self,
        stdin: socket.socket | None,
        stdout: socket.socket | None,
        stderr: int | None,
        pidfd: int | None,
        reap: Callable[[], int],
        stderr_log: Callable[[bytes], None] | None = None,
        *,
        exit_on_client_eof: bool = False,
        exit_on_service_eof: bool = False,
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        #: pidfd of the process (None for socket services)
        self.pidfd = pidfd
        #: returns the status once the process has exited (called after pidfd is readable)
        self.reap = reap
        #: copy stderr text to a log (None: no copy)
        self.stderr_log = stderr_log
        #: socket services' rpc-config: the caller's stdin EOF ends the call
        self.exit_on_client_eof = exit_on_client_eof
        #: socket services' rpc-config: the socket's EOF ends both directions
        self.exit_on_service_eof = exit_on_service_eof


def run_service(
    channel: socket.socket,
    own_version: int,
    end: ServiceEnd,
    log: Callable[[str], None],
    single_socket: SingleSocket | None = None,
    traffic: Traffic | None = None,
    batch: bool = False,
) -> int:
    """Service side of a call (reference: End of a call), after the own HELLO went out
    (`service_side.send_hello`); `traffic` is filled in as data passes. `batch`: the
    service shares this process's session, so its scheduling group (`_batch_scheduling`
    once the call moves bulk data).
    Returns the status sent, or -1 if the channel closed early. A service side relays one
    call at a time, so the channel's buffer and stderr's start small (`_first_buffer`);
    stdout's, whose reads lead to splicing, is mapped at once: a small start there made the
    first splice sometimes find nothing (`tests/integration/test_relay_splice.py`)."""
    relay = Relay(channel, own_version, log, ServiceStream, hello_sent=True, traffic=traffic,
                  batch=batch, lean=True)
    return _Service(relay, end, single_socket).run()


class _Service:
    """The service side's loop: one poll() round per `step`; `order` decides what goes when."""

    def __init__(self, relay: Relay, end: ServiceEnd, single_socket: SingleSocket | None) -> None:
        self.relay = relay
        self.end = end
        self.single_socket = single_socket
        self.sources: list[Source] = []
        self.out_src: Source | None = None
        self.err_src: Source | None = None
        for sock in (end.stdin, end.stdout):
            if sock is not None:
                tune(sock)
        if end.stdout is not None:
            end.stdout.setblocking(False)
            self.out_src = Source(end.stdout.fileno(), MsgType.DATA_STDOUT, sock=end.stdout)
            self.out_src.splice_after = _SPLICE_AFTER
            self.sources.append(self.out_src)
        if end.stderr is not None:
            _set_nonblocking(end.stderr)
            self.err_src = Source(end.stderr, MsgType.DATA_STDERR, lean=True)
            self.sources.append(self.err_src)
        self.inp: Sink | None = None
        if end.stdin is not None:
            end.stdin.setblocking(False)
            self.inp = Sink(end.stdin.fileno(), sock=end.stdin, shutdown_only=True)
        self.sinks = [self.inp] if self.inp is not None else []
        self.order = ServiceOrder(has_stderr=self.err_src is not None)
        self.status: int | None = None
        #: a socket service has no process; what stands for its exit is the end of its input
        self.socket_service = end.pidfd is None
        self.exited = False
        self.switched = False
        self.poller = select.poll()

    def run(self) -> int:
        try:
            return self._run()
        finally:
            for src in self.sources:
                src.close_pipe()

    def _run(self) -> int:
        relay, end = self.relay, self.end
        while True:
            if relay.version:
                for msgtype in self.order.opening():
                    relay.queue_message(msgtype)
            self._switch_socket()
            if self.socket_service:
                self.exited = _socket_input_over(relay, end, self.out_src, self.inp,
                                                 self.order.client_eof)
            outputs_ended = all(s.eof for s in self.sources) and relay.version != 0
            if self.order.exit_code_due(outputs_ended, self.exited):
                # the last EOFs go with EXIT_CODE: one send, one wake-up of the caller
                break
            relay.flush()
            if relay.channel_eof:
                relay.log("vchan connection closed early")
                _close_end(end, self.sinks)
                return -1
            if self._step(self._poll()):
                _close_end(end, self.sinks)
                return -1
        status = 0 if self.socket_service else self.status
        if status is None:
            status = end.reap()
        _close_end(end, self.sinks)
        relay.queue_message(MsgType.DATA_EXIT_CODE, exit_code_payload(status))
        _flush_blocking(relay)
        return status

    def _switch_socket(self) -> None:
        """SIGUSR1 from the service: read its output from its stdin socket (End of a call)."""
        single, end, out_src = self.single_socket, self.end, self.out_src
        if single is None or not single.requested or self.switched:
            return
        self.switched = True
        if out_src is not None and end.stdin is not None and not out_src.eof:
            _use_single_socket(out_src, end.stdin)

    def _poll(self) -> dict[int, int]:
        end = self.end
        paused = self.inp is not None and self.inp.pending_size > _PENDING_LIMIT
        extra: dict[int, int] = {}
        if end.pidfd is not None and not self.exited:
            extra[end.pidfd] = _POLLIN
        if self.single_socket is not None and not self.switched:
            extra[self.single_socket.fd] = _POLLIN
        return _poll_sources(self.poller, self.relay, self.sources, self.sinks, extra, paused)

    def _step(self, ready: dict[int, int]) -> bool:
        """Serve what poll() found ready; True when the peer broke the channel's rules."""
        relay, end, inp = self.relay, self.end, self.inp
        if self.single_socket is not None and ready.get(self.single_socket.fd):
            self.single_socket.drain()
        if end.pidfd is not None and not self.exited and ready.get(end.pidfd, 0):
            self._process_exited()
        if inp is not None and inp.pending and ready.get(inp.fd, 0) & (_POLLOUT | _POLLERR):
            _drain_sink(inp)
        if relay.outq and ready.get(relay.chfd, 0) & (_POLLOUT | _POLLERR):
            relay.flush()
        for s in self.sources:
            if _source_readable(s, ready):
                _pump_source(relay, s, end.stderr_log if s is self.err_src else None)
        if ready.get(relay.chfd, 0) & (_POLLIN | _POLLERR) and not relay.channel_eof:
            _deliver(relay.read_actions(), self._sink_of, self._received)
            return relay.failed is not None
        return False

    def _process_exited(self) -> None:
        self.exited = True
        self.status = self.end.reap()
        inp = self.inp
        if inp is not None and not inp.closed:
            # the process is gone: nobody will read its stdin
            inp.pending.clear()
            inp.pending_size = 0
            _close_sink(inp)

    def _sink_of(self, action: Action) -> Sink | None:
        return self.inp if action is Action.OUTPUT else None

    def _received(self, action: Action, payload: memoryview) -> None:
        if action is Action.OUTPUT_EOF and self.inp is not None:
            _end_sink(self.inp)
            self.order.client_eof = True


def _socket_input_over(relay: Relay, end: ServiceEnd, out_src: Source | None, inp: Sink | None,
                       client_eof: bool) -> bool:
    """Whether a socket service's input direction is over: the call ends once both directions
    are (its output may end first, by a half-close, and input still flows). rpc-config may
    end the call at one side's EOF instead."""
    if inp is None or out_src is None:
        return True
    if end.exit_on_service_eof and out_src.eof and not inp.closed:
        inp.pending.clear()
        inp.pending_size = 0
        _close_sink(inp)
    if end.exit_on_client_eof and client_eof and inp.closed and not out_src.eof:
        # stop reading the socket: its EOF is sent now, whatever it still holds
        out_src.eof = True
        relay.queue_message(MsgType.DATA_STDOUT)
    return inp.closed


def _use_single_socket(src: Source, both: socket.socket) -> None:
    """Stop reading the process's stdout socket; read its stdin socket instead."""
    if src.sock is not None and src.sock is not both:
        src.sock.close()
    both.setblocking(False)
    src.sock = both
    src.fd = both.fileno()


def _close_end(end: ServiceEnd, sinks: list[Sink]) -> None:
    for sink in sinks:
        _close_sink(sink)
    for s in (end.stdout, end.stdin):
        if s is not None:
            s.close()
    if end.stderr is not None:
        try:
            os.close(end.stderr)
        except OSError:
            pass


def _flush_blocking(relay: Relay) -> None:
    relay.channel.setblocking(True)
    relay.flush()
    relay.channel.setblocking(False)
