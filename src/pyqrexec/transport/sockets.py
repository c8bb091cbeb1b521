"""Unix stream sockets for the modules on the two clients' start-up path.

Importing `socket` turns hundreds of the C module's constants into enums, about 4 ms of every
`qrexec-client` and `qrexec-client-vm` call (docs/architecture.md#code-shape). What those
modules use of a socket (connect, bind, listen, send, recv_into, sendmsg, shutdown, ...) is
the C type underneath, `_socket.socket`; so they make their sockets here. A program that has
`socket` loaded anyway (the daemons, the agent, the client library, the tests) gets the full
class, and what it is handed keeps `accept`, `makefile` and the context manager.
"""

from __future__ import annotations

import _socket
import sys
from _socket import AF_UNIX, SHUT_WR, SO_RCVBUF, SO_SNDBUF, SOCK_STREAM, SOL_SOCKET

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

__all__ = ["unix_stream", "socketpair", "accept", "AF_UNIX", "SHUT_WR", "SO_RCVBUF",
           "SO_SNDBUF", "SOCK_STREAM", "SOL_SOCKET"]


def unix_stream() -> socket.socket:
    """A new AF_UNIX stream socket (close-on-exec, as every new socket is)."""
    full = sys.modules.get("socket")
    if full is not None:
        return full.socket(AF_UNIX, SOCK_STREAM)  # type: ignore[no-any-return]
    # the C type: typed as the class, of which the clients' path uses only its C methods
    return _socket.socket(AF_UNIX, SOCK_STREAM)  # type: ignore[return-value]


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of AF_UNIX stream sockets."""
    full = sys.modules.get("socket")
    if full is not None:
        return full.socketpair()  # type: ignore[no-any-return]
    a, b = _socket.socketpair(AF_UNIX, SOCK_STREAM)
    return a, b  # type: ignore[return-value]


def accept(listener: socket.socket) -> socket.socket:
    """The next connection on `listener` (blocking as the listener is)."""
    if hasattr(listener, "accept"):
        return listener.accept()[0]
    fd, _ = listener._accept()  # type: ignore[attr-defined]
    return _socket.socket(AF_UNIX, SOCK_STREAM, 0, fd)  # type: ignore[return-value]
