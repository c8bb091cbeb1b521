"""The call spawner: a small process that forks a resident program's per-call processes
(docs/architecture.md#the-call-spawner).

Forking the agent itself costs more than the rest of a short call's start. The parent copies
the page tables of a 16 MiB process; the child runs the at-fork hooks of `threading` and
`logging` and takes a private copy of every page it touches; and while any child lives, every
page the parent writes is copied too. About 1.5 ms of CPU per call, most of it before the call
process can connect anything.

So the agent forks a spawner once, before it loads asyncio, and hands it each call as one
message. The spawner keeps a spare: a call process forked ahead of its call, waiting for the
call's parameters. A call starts in the time of two small messages; the spawner forks the next
spare while the call runs. When the spawner is gone the agent forks the call itself, as before.

Each call's message carries the write end of a pipe the call process holds until it exits:
the parent watches the read end for EOF, so it learns of the end without owning the process.
The spawner reaps its children and logs their exit codes.
"""

from __future__ import annotations

import os
import select
import signal
import socket
from collections.abc import Callable

from .forking import fork_call

__all__ = ["SPAWNER_NAME", "SPARE_NAME", "Spawner", "start_spawner"]

#: process names (comm, as `ps` shows them) of the spawner and of a spare while it waits; a
#: spare takes back its parent's name when it gets its call
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
        """No more calls; the spawner and its spare exit, the calls it started go on."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def start_spawner(body: Callable[[bytes], int], log: Callable[[str], None]) -> Spawner:
    """Fork a spawner whose call processes run `body(params)` and exit with its status."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = fork_call(lambda: _SpawnerProcess(theirs, body, log).serve(), log,
                        keep=(theirs.fileno(),))
    finally:
        theirs.close()
    ours.setblocking(False)
    return Spawner(ours, pid)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One call message: (parameters, passed fds), with the fds close-on-exec; (b"", []) at
    EOF."""
    params, fds, _flags, _addr = socket.recv_fds(sock, _MAX_PARAMS, 1, socket.MSG_CMSG_CLOEXEC)
    return params, fds


class _SpawnerProcess:
    """The spawner's loop: calls from the parent, exits of the children."""

    def __init__(self, sock: socket.socket, body: Callable[[bytes], int],
                 log: Callable[[str], None]) -> None:
        self.sock = sock
        self.body = body
        self.log = log
        #: our end of the waiting spare's socket, and its pid
        self.spare: socket.socket | None = None
        self.spare_pid = 0
        #: the parent's process name, which the call processes keep
        self.name = b""

    def serve(self) -> int:
        self.name = rename(SPAWNER_NAME)
        # SIGCHLD wakes the poll through the wakeup fd; the handler itself does nothing
        wake_read, wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(wake_read, select.POLLIN)
        self._refill()
        while True:
            for fd, _events in poller.poll():
                if fd == wake_read:
                    while _drained(wake_read):
                        pass
                    self._reap()
                    continue
                try:
                    params, fds = _receive(self.sock)
                except OSError:
                    return 0
                if not params:
                    for held in fds:
                        os.close(held)
                    return 0  # the parent is gone; the spare sees its socket close
                self._start(params, fds)

    def _start(self, params: bytes, fds: list[int]) -> None:
        held = fds[0] if fds else None
        spare, self.spare = self.spare, None
        handed = False
        if spare is not None:
            try:
                socket.send_fds(spare, [params], [] if held is None else [held])
                handed = True
            except OSError:
                pass  # it died waiting: its exit is reaped, the call is forked below
            spare.close()
        if not handed:
            fork_call(lambda: self._run(params), self.log, keep=() if held is None else (held,))
        if held is not None:
            os.close(held)
        self._refill()

    def _refill(self) -> None:
        if self.spare is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.spare_pid = fork_call(lambda: self._serve_as_spare(theirs), self.log,
                                       keep=(theirs.fileno(),))
        except OSError as err:
            self.log(f"cannot fork a spare call process: {err}")
            ours.close()
            return
        finally:
            theirs.close()
        self.spare = ours

    def _serve_as_spare(self, sock: socket.socket) -> int:
        """A spare's life: wait for a call, then run it; exit 0 when the spawner goes away
        first. The fd that came with the call stays open until this process exits."""
        rename(SPARE_NAME)
        try:
            params, _held = _receive(sock)
        except OSError:
            return 0
        sock.close()
        if not params:
            return 0
        return self._run(params)

    def _run(self, params: bytes) -> int:
        if self.name:
            rename(self.name)
        return self.body(params)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.spare_pid and self.spare is not None:
                # killed while it waited: the next call gets a new one
                self.spare.close()
                self.spare = None
                continue
            self.log(f"pid {pid} exited with {os.waitstatus_to_exitcode(status)}")


def _drained(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def rename(name: bytes) -> bytes:
    """Set this process's name (comm); returns the previous one (b"" without /proc)."""
    try:
        with open("/proc/self/comm", "r+b", buffering=0) as comm:
            old = comm.read().rstrip(b"\n")
            comm.write(name)
    except OSError:
        return b""
    return old
