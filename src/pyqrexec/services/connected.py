"""Starting a socket or a TCP service (docs/reference/services.md#socket-services): connecting
it is its start, so this happens once the call's data channel is up (`spawn.Prepared`)."""

from __future__ import annotations

import os
import socket

from ..protocol.cmdline import Command, ServiceCall
from ..protocol.constants import EXIT_PROBLEM, RPC_REQUEST_COMMAND
from .lookup import Entry, ServiceKind
from .rpcconfig import ServiceConfig
from .spawn import Detached, Failed, Result, SpawnContext, Started
from .tcptarget import TcpTargetError, tcp_target

__all__ = ["service_header", "start_connected"]


def service_header(command: Command) -> bytes:
    """What a socket or TCP service reads first: the text after `QUBESRPC `, then NUL."""
    return command.text[len(RPC_REQUEST_COMMAND) + 1 :] + b"\0"


def _connect_unix(path: bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(path) < 108:
            sock.connect(path)
            return sock
        # sun_path holds 108 bytes: reach longer paths through a short private symlink
        import tempfile  # lazy: rare; ~0.7 MiB (shutil, bz2, lzma) in every idle agent

        directory = tempfile.mkdtemp(prefix="qrexec-", dir="/tmp")
        link = os.path.join(os.fsencode(directory), b"s")
        try:
            os.symlink(path, link)
            sock.connect(link)
        finally:
            if os.path.lexists(link):
                os.unlink(link)
            os.rmdir(directory)
        return sock
    except OSError:
        sock.close()
        raise


def _connect_tcp(link_text: bytes, argument: bytes | None) -> socket.socket:
    target = tcp_target(link_text, argument)
    family = socket.AF_INET6 if target.ipv6_only else socket.AF_UNSPEC
    try:
        infos = socket.getaddrinfo(
            target.host,
            target.port,
            family,
            socket.SOCK_STREAM,
            0,
            socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
        )
    except socket.gaierror as err:
        raise TcpTargetError(f"Invalid host {target.host!r}: {err.strerror}") from err
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


def start_connected(
    command: Command, call: ServiceCall, found: Entry, config: ServiceConfig, ctx: SpawnContext
) -> Result:
    try:
        if found.kind is ServiceKind.TCP:
            assert found.link_text is not None
            sock = _connect_tcp(found.link_text, call.argument)
        else:
            sock = _connect_unix(found.path)
    except TcpTargetError as err:
        return Failed(EXIT_PROBLEM, f"{os.fsdecode(found.path)}: {err}")
    except OSError as err:
        return Failed(EXIT_PROBLEM, f"Failed to connect to {os.fsdecode(found.path)}: {err}")
    try:
        if not config.skip_service_descriptor:
            sock.sendall(service_header(command))
    except OSError as err:
        sock.close()
        return Failed(EXIT_PROBLEM, f"Failed to write to {os.fsdecode(found.path)}: {err}")
    if ctx.just_exec:
        sock.close()
        return Detached(None)
    return Started(None, sock, sock, None, config)
