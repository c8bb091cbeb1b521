"""Listening Unix stream sockets that replace a stale file and appear only when ready."""

from __future__ import annotations

import os
import socket

__all__ = ["listen_unix"]


def listen_unix(path: str, *, mode: int, backlog: int) -> socket.socket:
    """Unlink a stale file at `path`, bind, chmod to `mode`, listen.

    The socket is made under a temporary name and renamed into place once it accepts
    connections, so a peer retrying on ENOENT never meets it half-made (EACCES, ECONNREFUSED).
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}.new"
    try:
        sock.bind(staging)
        os.chmod(staging, mode)
        sock.listen(backlog)
        os.rename(staging, path)
    except BaseException:
        sock.close()
        try:
            os.unlink(staging)
        except OSError:
            pass
        raise
    return sock
