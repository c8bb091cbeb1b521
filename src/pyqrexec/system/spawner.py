"""The call spawner: a small process that keeps the worker processes a resident program's
calls run in (docs/architecture.md#the-call-spawner).

Forking the agent for each call cost more than the rest of a short call's start: the parent
copies the page tables of a 16 MiB process, the child runs the at-fork hooks of `threading`
and `logging`, and both then copy every page they write to. About 1.5 ms of CPU per call.

So the agent forks a spawner once, before it loads asyncio, and hands it each call as one
message. The spawner passes it to an idle worker, which handles one call at a time and then
waits for the next; it forks a worker when none is idle, and one ahead when it has just
handed out the last. A worker serves again only after `_tidy` found the call left nothing
behind. When the spawner is gone the agent forks each call itself, as before.

Each call's message carries the write end of a pipe the worker holds until the call has
ended: the parent watches the read end for EOF, so it learns of the end without owning the
process.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
from collections.abc import Callable

from .forking import fork_call

__all__ = ["SPAWNER_NAME", "SPARE_NAME", "Spawner", "call_ended", "start_spawner"]

#: process names (comm, as `ps` shows them) of the spawner and of a worker while it waits; a
#: worker takes its parent's name while it handles a call
SPAWNER_NAME = b"qrexec-spawner"
SPARE_NAME = b"qrexec-spare"
#: a call's parameters fit in one message: a command line is at most 64 KiB
_MAX_PARAMS = 1 << 18


class Spawner:
    """The parent's end of a spawner."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        #: SOCK_SEQPACKET, non-blocking: a message is a call, and a full queue is no spawner
        self.sock: socket.socket | None = sock
        self.pid = pid

    def launch(self, params: bytes) -> int | None:
        """Have a call process run `params`. Returns the read end of a pipe that reaches EOF
        when that process has exited (the caller closes it); None when the spawner cannot
        take the call now, and the caller forks it itself."""
        if self.sock is None:
            return None
        watch, held = os.pipe2(os.O_CLOEXEC)
        try:
            socket.send_fds(self.sock, [params], [held])
        except BlockingIOError:
            os.close(watch)
            return None
        except OSError:
            os.close(watch)
            self.close()  # gone: its end of the socket is closed
            return None
        finally:
            os.close(held)
        return watch

    def close(self) -> None:
        """No more calls; the spawner and its idle workers exit, the calls in flight go on."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def call_ended(pid: int, status: int) -> str:
    """The log line for the end of a call that process `pid` handled."""
    return f"call handled by pid {pid} ended with {status}"


def start_spawner(body: Callable[[bytes], int], log: Callable[[str], None],
                  preload: Callable[[], None] | None = None) -> Spawner:
    """Fork a spawner whose call processes run `body(params)`; its return value is the call's
    status. `preload` runs in the spawner before it forks any: what every call needs and
    the parent does not (its imports), loaded once for all workers."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def spawner() -> int:
        if preload is not None:
            preload()
        return _SpawnerProcess(theirs, body, log).serve()

    try:
        pid = fork_call(spawner, log, keep=(theirs.fileno(),))
    finally:
        theirs.close()
    ours.setblocking(False)
    return Spawner(ours, pid)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One call message: (parameters, passed fds), with the fds close-on-exec; (b"", []) at
    EOF."""
    params, fds, _flags, _addr = socket.recv_fds(sock, _MAX_PARAMS, 1, socket.MSG_CMSG_CLOEXEC)
    return params, fds


#: what a worker says when it is ready for another call
_IDLE = b"I"
#: idle workers kept; more exit when they finish (a burst of calls leaves this many)
MAX_IDLE = 2
#: calls one worker serves before it exits and a fresh one takes its place
MAX_CALLS = 500


class _SpawnerProcess:
    """The spawner's loop: calls from the parent, workers coming back idle, children's exits."""

    def __init__(self, sock: socket.socket, body: Callable[[bytes], int],
                 log: Callable[[str], None]) -> None:
        self.sock = sock
        self.body = body
        self.log = log
        self.poller = select.poll()
        #: every live worker's socket by its fd; the idle ones, most recently used last
        self.workers: dict[int, socket.socket] = {}
        self.idle: list[socket.socket] = []
        #: the parent's process name, which a worker takes while it handles a call
        self.name = b""
        #: where calls start: a call may change the directory (a root agent's shell command
        #: runs in the user's home), a worker goes back here afterwards
        self.cwd = os.getcwd()

    def serve(self) -> int:
        self.name = rename(SPAWNER_NAME)
        # Woken by the agent's hand-over, a SCHED_BATCH spawner waits for the agent to sleep
        # instead of preempting it; the worker it then wakes lands on a CPU about to idle
        # rather than behind the caller (docs/architecture.md#the-call-spawner).
        _scheduled(os.SCHED_BATCH)
        # SIGCHLD wakes the poll through the wakeup fd; the handler itself does nothing
        wake_read, wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.poller.register(self.sock, select.POLLIN)
        self.poller.register(wake_read, select.POLLIN)
        self._fork_worker(None)
        while True:
            for fd, _events in self.poller.poll():
                if fd == wake_read:
                    _drain(wake_read)
                    self._reap()
                elif fd in self.workers:
                    self._worker_said(self.workers[fd])
                else:
                    try:
                        params, fds = _receive(self.sock)
                    except OSError:
                        return 0
                    if not params:
                        for held in fds:
                            os.close(held)
                        return 0  # the parent is gone; the workers see their sockets close
                    self._start(params, fds)

    def _start(self, params: bytes, fds: list[int]) -> None:
        try:
            while self.idle:
                worker = self.idle.pop()
                try:
                    socket.send_fds(worker, [params], fds)
                except OSError:
                    self._forget(worker)  # it died waiting: its exit is reaped
                    continue
                if not self.idle:
                    self._fork_worker(None)  # the next call finds one ready
                return
            self._fork_worker((params, fds))
        finally:
            for held in fds:
                os.close(held)

    def _fork_worker(self, call: tuple[bytes, list[int]] | None) -> None:
        """A worker, waiting for a call or (`call`) starting with that one."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        keep = [theirs.fileno(), *(call[1] if call is not None else ())]
        try:
            fork_call(lambda: self._work(theirs, call), self.log, keep=keep)
        except OSError as err:
            self.log(f"cannot fork a call process: {err}")
            ours.close()
            return
        finally:
            theirs.close()
        self.workers[ours.fileno()] = ours
        self.poller.register(ours, select.POLLIN)
        if call is None:
            self.idle.append(ours)

    def _worker_said(self, worker: socket.socket) -> None:
        try:
            said = worker.recv(16)
        except OSError:
            said = b""
        if said == _IDLE and len(self.idle) < MAX_IDLE:
            self.idle.append(worker)
        else:
            self._forget(worker)  # gone, or one idle worker too many: EOF tells it to exit

    def _forget(self, worker: socket.socket) -> None:
        if worker in self.idle:
            self.idle.remove(worker)
        self.workers.pop(worker.fileno(), None)
        self.poller.unregister(worker)
        worker.close()

    def _work(self, sock: socket.socket, call: tuple[bytes, list[int]] | None) -> int:
        """A worker's life: handle calls one at a time until the spawner has no more for it,
        the worker has served `MAX_CALLS`, or a call left something behind. Each call's
        passed fd stays open until that call has ended."""
        status = 0
        _scheduled(os.SCHED_OTHER)  # a worker, and what it starts, are scheduled as usual
        for served in range(MAX_CALLS):
            if call is None:
                _set_name(SPARE_NAME)
                try:
                    call = _receive(sock)
                except OSError:
                    return status
                if not call[0]:
                    return status
            if self.name:
                _set_name(self.name)
            params, held = call
            call = None
            status = self.body(params)
            self.log(call_ended(os.getpid(), status))
            for fd in held:
                os.close(fd)
            if served + 1 == MAX_CALLS or not self._tidy(sock.fileno()):
                break
            try:
                sock.send(_IDLE)
            except OSError:
                break
        return status

    def _tidy(self, sock: int) -> bool:
        """Undo what a call may have changed in this process; whether it may serve another.
        A call that leaves a child running (a detached service) or a descriptor open ends
        its worker, whose exit hands the child to init as a per-call process would."""
        try:
            while True:
                pid, _status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    return False
        except ChildProcessError:
            pass
        gc.collect()
        if any(_is_open(int(fd)) for fd in os.listdir("/proc/self/fd")
               if int(fd) not in (0, 1, 2, sock)):
            return False
        if (signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL
                or signal.set_wakeup_fd(-1) != -1):
            return False
        try:
            os.chdir(self.cwd)
        except OSError:
            return False
        return _scheduled(os.SCHED_OTHER)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                self.log(f"call process {pid} killed by signal {-code}")


def _scheduled(policy: int) -> bool:
    """Whether this process runs under `policy` (set now if it did not)."""
    try:
        if os.sched_getscheduler(0) != policy:
            os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:
        return False
    return True


def _is_open(fd: int) -> bool:
    """Whether `fd` is open (the directory listing of /proc/self/fd saw its own, now closed)."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _drain(fd: int) -> None:
    """Empty a non-blocking pipe."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _set_name(name: bytes) -> None:
    try:
        with open("/proc/self/comm", "wb", buffering=0) as comm:
            comm.write(name)
    except OSError:
        pass


def rename(name: bytes) -> bytes:
    """Set this process's name (comm); returns the previous one (b"" without /proc)."""
    try:
        with open("/proc/self/comm", "rb") as comm:
            old = comm.read().rstrip(b"\n")
    except OSError:
        return b""
    _set_name(name)
    return old
