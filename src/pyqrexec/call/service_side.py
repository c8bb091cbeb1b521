"""The service side of one call after the data channel is connected
(docs/reference/protocol.md#end-of-a-call;
docs/reference/services.md#exit-statuses): report a status without running anything, or relay a
started service.

Shared by the VM agent's per-call handler and dom0's service callers (request worker,
`qrexec-client -c` to dom0). Blocking; no asyncio.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence

from ..protocol.channel import NEED_DATA, DataHello
from ..protocol.cmdline import Command
from ..protocol.constants import MsgType
from ..protocol.errors import RemoteProtocolError
from ..protocol.wire import HEADER, hello, pack_exit_code
from ..services.environment import log_tag
from ..services.spawn import Started
from ..transport.feed import read_message
from .relay import ServiceEnd, SingleSocket, run_service
from .traffic import Traffic

__all__ = ["VM_FAILURE_EOFS", "DOM0_FAILURE_EOFS", "send_hello", "send_status_only",
           "relay_started"]

#: a VM handler that started nothing: STDOUT EOF, then STDERR EOF
#: (docs/reference/protocol.md#command-strings)
VM_FAILURE_EOFS: tuple[int, ...] = (MsgType.DATA_STDOUT, MsgType.DATA_STDERR)
#: a dom0 service side that started nothing: STDERR EOF, then STDOUT EOF
#: (docs/reference/protocol.md#vm-to-dom0 step 5)
DOM0_FAILURE_EOFS: tuple[int, ...] = (MsgType.DATA_STDERR, MsgType.DATA_STDOUT)

_PEER_HELLO_TIMEOUT = 10.0


def send_hello(channel: socket.socket, own_version: int) -> None:
    """The own HELLO, right after connecting and before anything else
    (docs/reference/protocol.md#dom0-to-vm
    step 6): a caller that sees the channel close after it knows the call got as far as the
    service side (closed early, not a set-up failure). The functions below assume it sent."""
    channel.sendall(hello(own_version))


def send_status_only(
    channel: socket.socket,
    own_version: int,
    status: int,
    log: Callable[[str], None],
    eofs: Sequence[int] = VM_FAILURE_EOFS,
) -> None:
    """An empty message of each type in `eofs` (none for just-exec), then EXIT_CODE."""
    msgs = b""
    for msgtype in eofs:
        msgs += HEADER.pack(msgtype, 0)
    msgs += pack_exit_code(status)
    channel.sendall(msgs)
    _read_peer_hello(channel, own_version, log)


def _read_peer_hello(channel: socket.socket, own_version: int, log: Callable[[str], None]) -> None:
    """Best effort: consume the caller's HELLO so the caller sees an orderly close."""
    channel.settimeout(_PEER_HELLO_TIMEOUT)
    peer = DataHello(own_version)
    try:
        read_message(channel, peer, NEED_DATA)
    except RemoteProtocolError as err:
        if not peer.reader.eof:  # a caller that closes early is no news
            log(f"data channel: {err}")
    except OSError as err:
        log(f"data channel: {err}")


def relay_started(
    channel: socket.socket,
    started: Started,
    command: Command,
    text: bytes,
    own_version: int,
    log: Callable[[str], None],
    single_socket: SingleSocket | None = None,
    traffic: Traffic | None = None,
) -> int:
    """Relay a started service until it is over; closes the channel. `traffic` counts the
    data that passed.

    Returns the status sent as EXIT_CODE, or -1 when the channel broke or closed early.
    """
    pid = started.pid
    pidfd = None
    reap = _no_process
    if pid is not None:
        log(f"executed: {os.fsdecode(text)} (pid {pid})")
        pidfd = os.pidfd_open(pid)

        def reap() -> int:
            _, wstatus = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(wstatus)
            return 128 - code if code < 0 else code

    stderr_log = None
    if command.service is not None and started.stderr is not None:
        tag = log_tag(command.service)

        def stderr_log(data: bytes) -> None:
            for line in data.decode(errors="replace").splitlines():
                log(f"{tag}: {line}")

    socket_config = started.config if pid is None else None
    end = ServiceEnd(stdin=started.stdin, stdout=started.stdout, stderr=started.stderr,
                     pidfd=pidfd, reap=reap, stderr_log=stderr_log,
                     exit_on_client_eof=bool(socket_config and socket_config.exit_on_client_eof),
                     exit_on_service_eof=bool(socket_config and socket_config.exit_on_service_eof))
    status = run_service(channel, own_version, end, log, single_socket, traffic,
                         batch=not started.own_session)
    if pidfd is not None:
        os.close(pidfd)
    channel.close()
    if status < 0:
        return -1
    if pid is not None:
        log(f"pid {pid} exited with {status}")
    else:
        log("Socket service closed")
    return status & 0xFF


def _no_process() -> int:
    return 0
