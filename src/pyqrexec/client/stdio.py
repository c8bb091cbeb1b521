"""Local ends of a call that the client programs share."""

from __future__ import annotations

import os
import socket

__all__ = ["stdin_socket_pair"]


def stdin_socket_pair() -> tuple[socket.socket, socket.socket]:
    """`--use-stdin-socket`: fd 0, which must be a stream socket, for both directions.

    Two objects on duplicates of fd 0, so the relay can shut down the writing side alone.
    Raises OSError when fd 0 is not a stream socket.
    """
    sock = socket.socket(fileno=os.dup(0))
    if sock.type != socket.SOCK_STREAM:
        sock.close()
        raise OSError("stdin is not a stream socket")
    return sock, socket.socket(fileno=os.dup(sock.fileno()))
