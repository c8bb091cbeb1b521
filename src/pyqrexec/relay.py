"""The data-channel relay: one call's bytes between a vchan and local fds
(docs/reference/protocol.md#data-channel).

This is the hot path, so it is a plain poll() loop rather than asyncio: local input is read
into one reused buffer per stream and sent as many 64 KiB messages with a single
`sendmsg` (no copies); channel input is read in large `recv_into` calls and each payload is
written straight from that buffer. Copies happen only when a local writer is slow, in which
case the bytes that did not fit are queued (and reading the channel pauses past a limit).

The meaning of each received message comes from `protocol.data`; this module only moves
bytes and keeps the end-of-call ordering of docs/reference/protocol.md#end-of-a-call.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import struct
from collections import deque

from .protocol.constants import MsgType
from .protocol.data import Action, CallerStream, ServiceStream
from .protocol.errors import RemoteProtocolError
from .protocol.handshake import negotiate_data
from .protocol.wire import HEADER, hello, parse_exit_code, parse_hello
from .transport.unixsock import tune

#: on a client's start-up path: importing `typing` would cost ~3 ms (mypy takes it as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "SingleSocket", "Source", "Sink", "Relay", "run_caller", "run_service", "unsafe_filter",
]

_HDR = HEADER
_RECV_SIZE = 1 << 20
_READ_BATCH = 16
_PENDING_LIMIT = 8 << 20
_WAKE_MS = 10_000

_POLLIN = select.POLLIN | select.POLLPRI
_POLLOUT = select.POLLOUT
_POLLERR = select.POLLERR | select.POLLHUP | select.POLLNVAL

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
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.requested = True

    def drain(self) -> None:
        try:
            while os.read(self.fd, 64):
                pass
        except OSError:
            pass


class Source:
    """A local fd whose bytes become messages of `msgtype`; EOF becomes an empty one."""

    __slots__ = ("fd", "msgtype", "sock", "eof", "inflight", "buf", "stopped")

    def __init__(self, fd: int, msgtype: int, sock: socket.socket | None = None) -> None:
        self.fd = fd
        self.msgtype = msgtype
        #: the socket object owning `fd`, if any (kept alive; used for shutdown)
        self.sock = sock
        self.eof = False
        #: messages of this stream queued on the channel and not yet fully sent
        self.inflight = 0
        self.buf = bytearray(_READ_BATCH * 65536)
        #: stop reading without sending EOF (e.g. exit code seen)
        self.stopped = False


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
                 hello_sent: bool = False):
        self.channel = channel
        self.stream_type = stream_type
        #: what received messages mean; made once the peer's HELLO fixed the version
        self.stream: CallerStream | ServiceStream | None = None
        self.chfd = channel.fileno()
        channel.setblocking(False)
        self.own_version = own_version
        self.log = log
        self.version = 0
        self.limit = 0
        #: (data, source or None) pieces waiting to be sent, in order
        self.outq: deque[tuple[memoryview, Source | None, bool]] = deque()
        self.send_failed = False
        self.channel_eof = False
        self.rbuf = bytearray(_RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.rlen = 0
        #: how the peer broke the channel's rules (nothing more is read), None while it has not
        self.failed: str | None = None
        if not hello_sent:
            self._queue(memoryview(hello(own_version)), None, True)

    # -- sending -------------------------------------------------------------------------
    def _queue(self, data: memoryview, src: Source | None, last: bool) -> None:
        self.outq.append((data, src, last))

    def queue_message(self, msgtype: int, payload: bytes = b"") -> None:
        self._queue(memoryview(_HDR.pack(msgtype, len(payload)) + payload), None, True)

    def queue_from_source(self, src: Source, n: int) -> None:
        """Queue `n` bytes that were read into `src.buf` as messages of the chunk limit."""
        view = memoryview(src.buf)
        limit = self.limit
        for off in range(0, n, limit):
            size = min(limit, n - off)
            self._queue(memoryview(_HDR.pack(src.msgtype, size)), None, False)
            self._queue(view[off : off + size], src, True)
            src.inflight += 1

    def flush(self) -> None:
        """Send what the socket takes now (non-blocking)."""
        q = self.outq
        while q and not self.send_failed:
            iov = [item[0] for item in list(q)[:512]]
            try:
                sent = self.channel.sendmsg(iov)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:
                self.send_failed = True
                self._drop_queue()
                return
            while sent:
                data, src, last = q[0]
                if sent >= len(data):
                    sent -= len(data)
                    q.popleft()
                    if src is not None and last:
                        src.inflight -= 1
                else:
                    q[0] = (data[sent:], src, last)
                    sent = 0

    def drop_unsent(self) -> None:
        """Forget queued messages except the first (which may be partly sent already)."""
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
    def receive(self) -> bool:
        """Read what the channel has; False on EOF or error."""
        if self.rlen == len(self.rbuf):
            return True
        try:
            n = self.channel.recv_into(self.rview[self.rlen :])
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            n = 0
        if n == 0:
            self.channel_eof = True
            return False
        self.rlen += n
        return True

    def messages(self) -> list[tuple[int, memoryview]]:
        """Complete messages in the receive buffer (views valid until `consumed`).

        Messages before a violation of the channel's rules are returned; the violation
        itself sets `failed`, and nothing after it is read.
        """
        out: list[tuple[int, memoryview]] = []
        pos = 0
        try:
            pos = self._parse(out)
        except RemoteProtocolError as exc:
            self.failed = str(exc)
            self.log(f"data channel broken: {exc}")
        self._consumed = pos
        return out

    def _parse(self, out: list[tuple[int, memoryview]]) -> int:
        pos = 0
        view = self.rview
        rlen = self.rlen
        while rlen - pos >= 8:
            t, n = _HDR.unpack_from(view, pos)
            if self.version == 0:
                if t != MsgType.HELLO or n != 4:
                    raise RemoteProtocolError(f"data channel: expected HELLO, got {t:#x}")
            elif n > self.limit:
                raise RemoteProtocolError(f"data message of {n} bytes over the limit")
            if rlen - pos - 8 < n:
                break
            out.append((t, view[pos + 8 : pos + 8 + n]))
            pos += 8 + n
            if self.version == 0:
                peer = parse_hello(t, bytes(out.pop()[1]))
                self.version = negotiate_data(peer, self.own_version)
                self.stream = self.stream_type(self.version)
                self.limit = self.stream.limit
        return pos

    def read_actions(self) -> list[tuple[Action, memoryview]]:
        """Read the channel: what each complete message means. When the peer broke the
        channel's rules, the messages before that come back and `failed` says how."""
        self.receive()
        msgs = self.messages()
        stream = self.stream
        if stream is None:  # nothing after the HELLO yet
            return []
        actions: list[tuple[Action, memoryview]] = []
        for t, payload in msgs:
            action = stream.receive(t, len(payload))
            if action is Action.BROKEN:
                self.broken(t, payload)
                break
            actions.append((action, payload))
        for warning in stream.warnings:
            self.log(warning)
        stream.warnings.clear()
        return actions

    def broken(self, msgtype: int, payload: memoryview) -> None:
        """A received message breaks the channel's rules (`protocol.data` says BROKEN)."""
        self.failed = f"message {msgtype:#x} of {len(payload)} bytes"
        self.log(f"data channel broken: {self.failed}")

    def consumed(self) -> None:
        pos = self._consumed
        if pos:
            left = self.rlen - pos
            if left:
                self.rbuf[:left] = self.rview[pos : self.rlen]
            self.rlen = left


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


def _write_sink(sink: Sink, data: memoryview | bytes) -> None:
    """Write now what the fd takes; queue the rest."""
    if sink.closed:
        return
    if sink.filter:
        data = unsafe_filter(data)
    if not sink.pending:
        try:
            n = os.write(sink.fd, data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            _close_sink(sink)
            return
        if n == len(data):
            return
        data = data[n:]
    chunk = bytes(data)
    sink.pending.append(chunk)
    sink.pending_size += len(chunk)


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
            sink.sock.shutdown(socket.SHUT_WR)
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


def _pump_source(relay: Relay, src: Source,
                 copy: Callable[[bytes], None] | None = None) -> None:
    """Read what `src` has and queue it (EOF: the empty message); `copy` also gets the bytes."""
    n = _read_into(src)
    if n < 0:
        return
    if n == 0:
        src.eof = True
        relay.queue_message(src.msgtype)
        return
    if copy is not None:
        copy(bytes(src.buf[:n]))
    relay.queue_from_source(src, n)


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
) -> CallerResult:
    """Caller side of docs/reference/protocol.md#end-of-a-call until the call is over; returns the
    remote status."""
    relay = Relay(channel, own_version, log, CallerStream)
    sources: list[Source] = []
    src: Source | None = None
    if local_in is not None:
        _set_nonblocking(local_in)
        _grow_pipe(local_in)
        src = Source(local_in, MsgType.DATA_STDIN, sock=in_sock)
        sources.append(src)
    out: Sink | None = None
    if local_out is not None:
        _set_nonblocking(local_out)
        out = Sink(local_out, sock=out_sock, shutdown_only=out_sock is not None,
                   filter=filter_stdout)
    err = Sink(stderr_fd, filter=filter_stderr)
    sinks = [s for s in (out, err) if s is not None]
    started = False
    prefix_left = prefix
    status: int | None = None
    exit_seen = False
    stdin_eof_sent = False
    poller = select.poll()
    while True:
        relay.flush()
        if relay.version and not started:
            started = True
            if local_in is None and not prefix_left:
                relay.queue_message(MsgType.DATA_STDIN)
                stdin_eof_sent = True
        if started and prefix_left and not stdin_eof_sent:
            while prefix_left:
                chunk, prefix_left = prefix_left[: relay.limit], prefix_left[relay.limit :]
                relay.queue_message(MsgType.DATA_STDIN, chunk)
            if local_in is None:
                relay.queue_message(MsgType.DATA_STDIN)
                stdin_eof_sent = True
            relay.flush()
        if exit_seen:
            out_done = out is None or out.closed or relay.channel_eof
            if out is not None and relay.channel_eof and not out.closed:
                _end_sink(out)
                out_done = out.closed or not out.pending
            if out_done and not err.pending and (local_done is None or local_done()):
                break
        elif relay.channel_eof:
            break
        paused = out is not None and out.pending_size > _PENDING_LIMIT
        extra: dict[int, int] = {}
        if local_wait_fd is not None and exit_seen:
            extra[local_wait_fd] = _POLLIN
        if single_socket is not None:
            extra[single_socket.fd] = _POLLIN
        ready = _poll_sources(poller, relay, [] if prefix_left else sources, sinks, extra,
                              paused and not relay.channel_eof)
        if single_socket is not None and ready.get(single_socket.fd):
            single_socket.drain()
            if single_socket.requested and src is not None and out_sock is not None:
                _use_single_socket(src, out_sock)
                single_socket = None
        for sink in sinks:
            if sink.pending and ready.get(sink.fd, 0) & (_POLLOUT | _POLLERR):
                _drain_sink(sink)
        if relay.outq and ready.get(relay.chfd, 0) & (_POLLOUT | _POLLERR):
            relay.flush()
        for s in sources:
            if ready.get(s.fd, 0) & (_POLLIN | _POLLERR) and not s.eof and not s.stopped:
                _pump_source(relay, s)
                # its EOF is queued now: an exit code read below must not queue another
                stdin_eof_sent = stdin_eof_sent or s.eof
        if ready.get(relay.chfd, 0) & (_POLLIN | _POLLERR) and not relay.channel_eof:
            for action, payload in relay.read_actions():
                if action is Action.OUTPUT and out is not None:
                    _write_sink(out, payload)
                elif action is Action.OUTPUT_EOF and out is not None:
                    _end_sink(out)
                elif action is Action.ERROR:
                    _write_sink(err, payload)
                elif action is Action.EXIT:
                    status = parse_exit_code(bytes(payload))
                    exit_seen = True
            relay.consumed()
            if relay.failed is not None:
                relay.channel_eof = True
                break
            if exit_seen:
                if not stdin_eof_sent and not relay.send_failed:
                    # input queued for a service that has exited is useless: the EOF goes
                    # right after the message being sent (docs/reference/protocol.md#end-of-a-call
                    # caller step 3)
                    relay.drop_unsent()
                    relay.queue_message(MsgType.DATA_STDIN)
                    stdin_eof_sent = True
                if stop_input_on_exit and src is not None:
                    src.stopped = True
                prefix_left = b""
    if exit_seen and relay.outq and not relay.send_failed:
        # the STDIN EOF of step 3 goes out unless the service side has closed the channel;
        # a peer that neither reads nor closes is given the usual 10 s
        relay.channel.settimeout(_WAKE_MS / 1000)
        relay.flush()
        relay.channel.setblocking(False)
    else:
        relay.flush()
    # drain what is left to write locally (bounded by the peer having finished)
    _finish_sinks(sinks)
    if relay.version == 0:
        log("data channel: no usable HELLO from the service side")
        return CallerResult(None, no_hello=True)
    if relay.failed is not None:
        return CallerResult(status if exit_seen else None, broken=True)
    if not exit_seen:
        log("vchan connection closed early")
        return CallerResult(None)
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
) -> int:
    """Service side of docs/reference/protocol.md#end-of-a-call, after the own HELLO went out
    (`service_side.send_hello`). Returns the status sent, or -1 if the channel closed early."""
    relay = Relay(channel, own_version, log, ServiceStream, hello_sent=True)
    sources: list[Source] = []
    out_src: Source | None = None
    err_src: Source | None = None
    for sock in (end.stdin, end.stdout):
        if sock is not None:
            tune(sock)
    if end.stdout is not None:
        end.stdout.setblocking(False)
        out_src = Source(end.stdout.fileno(), MsgType.DATA_STDOUT, sock=end.stdout)
        sources.append(out_src)
    if end.stderr is not None:
        _set_nonblocking(end.stderr)
        err_src = Source(end.stderr, MsgType.DATA_STDERR)
        sources.append(err_src)
    inp: Sink | None = None
    if end.stdin is not None:
        end.stdin.setblocking(False)
        inp = Sink(end.stdin.fileno(), sock=end.stdin, shutdown_only=True)
    sinks = [inp] if inp is not None else []
    status: int | None = None
    #: a socket service has no process; what stands for its exit is the end of its input
    socket_service = end.pidfd is None
    exited = False
    client_eof = False
    sent_stderr_eof = False
    switched = False
    poller = select.poll()
    while True:
        relay.flush()
        if relay.version and err_src is None and not sent_stderr_eof:
            relay.queue_message(MsgType.DATA_STDERR)
            sent_stderr_eof = True
        if single_socket is not None and single_socket.requested and not switched:
            switched = True
            if out_src is not None and end.stdin is not None and not out_src.eof:
                _use_single_socket(out_src, end.stdin)
        if socket_service:
            exited = _socket_input_over(relay, end, out_src, inp, client_eof)
        streams_done = all(s.eof for s in sources) and relay.version != 0
        if streams_done and exited:
            if socket_service:
                status = 0
            if status is None:
                status = end.reap()
            break
        if relay.channel_eof:
            log("vchan connection closed early")
            _close_end(end, sinks)
            return -1
        paused = inp is not None and inp.pending_size > _PENDING_LIMIT
        extra: dict[int, int] = {}
        if end.pidfd is not None and not exited:
            extra[end.pidfd] = _POLLIN
        if single_socket is not None and not switched:
            extra[single_socket.fd] = _POLLIN
        ready = _poll_sources(poller, relay, sources, sinks, extra, paused)
        if single_socket is not None and ready.get(single_socket.fd):
            single_socket.drain()
        if end.pidfd is not None and not exited and ready.get(end.pidfd, 0):
            exited = True
            status = end.reap()
            if inp is not None and not inp.closed:
                # the process is gone: nobody will read its stdin
                inp.pending.clear()
                inp.pending_size = 0
                _close_sink(inp)
        if inp is not None and inp.pending and ready.get(inp.fd, 0) & (_POLLOUT | _POLLERR):
            _drain_sink(inp)
        if relay.outq and ready.get(relay.chfd, 0) & (_POLLOUT | _POLLERR):
            relay.flush()
        for s in sources:
            if ready.get(s.fd, 0) & (_POLLIN | _POLLERR) and not s.eof and not s.stopped:
                _pump_source(relay, s, end.stderr_log if s is err_src else None)
        if ready.get(relay.chfd, 0) & (_POLLIN | _POLLERR) and not relay.channel_eof:
            for action, payload in relay.read_actions():
                if action is Action.OUTPUT and inp is not None:
                    _write_sink(inp, payload)
                elif action is Action.OUTPUT_EOF and inp is not None:
                    _end_sink(inp)
                    client_eof = True
            relay.consumed()
            if relay.failed is not None:
                _close_end(end, sinks)
                return -1
    _close_end(end, sinks)
    relay.queue_message(MsgType.DATA_EXIT_CODE, struct.pack("<i", status))
    _flush_blocking(relay)
    return status


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
