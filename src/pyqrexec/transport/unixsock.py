"""Listening Unix stream sockets that replace a stale file and appear only when ready."""

from __future__ import annotations

import errno
import os
import stat
import time

from . import sockets

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

__all__ = ["listen_unix", "try_connect", "Backoff", "tune", "stdio_pair"]

#: kernel buffer per direction; large buffers let one syscall move many 64 KiB messages
_SOCKET_BUFFER = 4 * 1024 * 1024


def tune(sock: socket.socket) -> None:
    """Bigger kernel buffers: fewer wake-ups per GiB on a data path (best effort)."""
    for opt in (sockets.SO_SNDBUF, sockets.SO_RCVBUF):
        try:
            sock.setsockopt(sockets.SOL_SOCKET, opt, _SOCKET_BUFFER)
        except OSError:
            pass


def stdio_pair() -> tuple[socket.socket, socket.socket]:
    """(ours, theirs): a socket pair to serve as a started process's stdin or stdout.

    The process's end is tuned too, so that a program writing small chunks (head, cat) keeps
    megabytes in flight instead of ~200 KiB and blocks far less often.
    """
    ours, theirs = sockets.socketpair()
    tune(ours)
    tune(theirs)
    return ours, theirs


def listen_unix(path: str, *, mode: int, backlog: int,
                staging_dir: str | None = None) -> socket.socket:
    """Unlink a stale file at `path`, bind, chmod to `mode`, listen.

    The socket is made under a temporary name and renamed into place once it accepts
    connections, so a peer retrying on ENOENT never meets it half-made (EACCES, ECONNREFUSED).

    `staging_dir`, when we can make a private directory in it (same filesystem as `path`),
    is where that happens: `path`'s directory may be writable by a domain, which could swap
    the new socket for a symlink between bind and chmod and have us chmod what it points to.
    Otherwise the socket is staged beside `path` (a domain's own programs, in its own
    directories).
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    private = None
    if staging_dir is not None:
        # the name needs no secrecy: only we (and the host) may write in `staging_dir`
        candidate = os.path.join(staging_dir, f".listen-{os.getpid()}-{id(object())}")
        try:
            os.mkdir(candidate, 0o700)
            private = candidate
        except OSError:
            private = None
    sock = sockets.unix_stream()
    staging = (os.path.join(private, "s") if private is not None
               else f"{path}.{os.getpid()}.new")
    try:
        sock.bind(staging)
        os.chmod(staging, mode)
        sock.listen(backlog)
        os.rename(staging, path)
    except BaseException as err:
        sock.close()
        try:
            os.unlink(staging)
        except OSError:
            pass
        if private is not None and isinstance(err, OSError) and err.errno == errno.EXDEV:
            # `path`'s directory is another mount (a pair directory bound into a sandbox
            # whose own view we may write): stage beside `path` as without a private one
            os.rmdir(private)
            return listen_unix(path, mode=mode, backlog=backlog)
        raise
    finally:
        if private is not None:
            try:
                os.rmdir(private)
            except OSError:
                pass
    return sock


#: not there yet, or not listening yet: a peer that is starting up
_NOT_YET = (errno.ENOENT, errno.ECONNREFUSED)


def try_connect(path: str, *, wait_for_listener: bool,
                follow_symlinks: bool = True) -> socket.socket | None:
    """One non-blocking connect attempt: the connected socket, or None to try again later.

    A full listen backlog (EAGAIN) is always worth another try: a non-blocking Unix connect
    never completes later, unlike TCP's EINPROGRESS. With `wait_for_listener`, a missing or
    refusing socket (ENOENT, ECONNREFUSED) is too. Any other error is raised.

    Without `follow_symlinks` the socket is reached by descriptor, never through a symlink:
    in a directory a domain can write, a link to some other socket of the host's would make
    us its client. (Services and sockets the administrator links on purpose are followed.)
    """
    if follow_symlinks:
        return _connect(path, wait_for_listener)
    try:
        target = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if wait_for_listener and err.errno in _NOT_YET:
            return None
        raise
    try:
        if not stat.S_ISSOCK(os.fstat(target).st_mode):
            raise OSError(errno.ECONNREFUSED, f"not a socket: {path}")
        return _connect(f"/proc/self/fd/{target}", wait_for_listener)
    finally:
        os.close(target)


def _connect(address: str, wait_for_listener: bool) -> socket.socket | None:
    sock = sockets.unix_stream()
    sock.setblocking(False)
    try:
        sock.connect(address)
    except BlockingIOError:
        sock.close()
        return None
    except OSError as err:
        sock.close()
        if wait_for_listener and err.errno in _NOT_YET:
            return None
        raise
    except BaseException:
        sock.close()
        raise
    return sock


class Backoff:
    """Pauses of `first` for the first `hold` seconds, then doubling up to `most`, until an
    optional deadline."""

    def __init__(self, first: float, most: float, timeout: float | None = None, *,
                 hold: float = 0.0) -> None:
        self.pause = first
        self.most = most
        now = time.monotonic()
        self.deadline = None if timeout is None else now + timeout
        self.steady_until = now + hold

    def next(self) -> float | None:
        """The pause before the next attempt, or None when time is up."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            return None
        pause = self.pause
        if now >= self.steady_until:
            self.pause = min(self.pause * 2, self.most)
        return pause
