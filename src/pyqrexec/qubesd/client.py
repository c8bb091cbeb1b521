"""Client of the qubesd sockets (docs/reference/protocol.md#qubesd-calls): the wire format and a
blocking call.

`qubesd_async` has the asyncio flavour.

Request: `METHOD+ARG dom0 name DEST\\0PAYLOAD` (`keyword KW` for a destination starting with
`@`), then shutdown of the write side. Response until EOF: `0\\0DATA`, or
`2\\0TYPE\\0TRACEBACK\\0FORMAT\\0ARGS…` for an error.
"""

from __future__ import annotations

import socket

__all__ = [
    "MAX_RESPONSE",
    "QubesdError",
    "encode_call",
    "decode_response",
    "call",
]

MAX_RESPONSE = 65534


class QubesdError(Exception):
    """qubesd answered an error (`exc_type` set) or could not be used at all (`exc_type` "")."""

    def __init__(self, message: str, exc_type: str = "") -> None:
        super().__init__(f"{exc_type}: {message}" if exc_type else message)
        self.exc_type = exc_type
        self.message = message


def encode_call(method: str, dest: str, arg: str = "", payload: bytes = b"") -> bytes:
    where = f"keyword {dest[1:]}" if dest.startswith("@") else f"name {dest}"
    return f"{method}+{arg} dom0 {where}\0".encode() + payload


def decode_response(data: bytes) -> bytes:
    """The DATA of a success response; raises `QubesdError` for anything else."""
    if len(data) > MAX_RESPONSE or len(data) < 2 or b"\0" not in data:
        raise QubesdError("invalid response from qubesd")
    if data.startswith(b"0\0"):
        return data[2:]
    if data.startswith(b"2\0"):
        fields = data[2:].split(b"\0")
        exc_type = fields[0].decode(errors="replace")
        text = fields[2].decode(errors="replace") if len(fields) > 2 else ""
        args = tuple(f.decode(errors="replace") for f in fields[3:] if f)
        try:
            message = text % args if args else text
        except (TypeError, ValueError):
            message = " ".join((text, *args))
        raise QubesdError(message, exc_type or "QubesException")
    raise QubesdError("invalid response from qubesd")


def call(
    method: str, dest: str, arg: str = "", payload: bytes = b"", *, path: str
) -> bytes:
    """Blocking call to the qubesd socket at `path` (a program's `QUBESD_SOCKET` or
    `QUBESD_INTERNAL_SOCKET`)."""
    chunks: list[bytes] = []
    size = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            sock.sendall(encode_call(method, dest, arg, payload))
            sock.shutdown(socket.SHUT_WR)
            while size <= MAX_RESPONSE and (chunk := sock.recv(65536)):
                chunks.append(chunk)
                size += len(chunk)
    except OSError as err:
        raise QubesdError(f"cannot call qubesd: {err}") from err
    return decode_response(b"".join(chunks))
