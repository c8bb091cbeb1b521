"""The request worker: from a validated trigger to a connected call
(docs/reference/protocol.md#vm-to-vm).

Upstream forks a process per request; here each request is an asyncio task of the daemon
(any mechanism with the same observable rules will do,
docs/reference/protocol.md#trigger-validation). It asks the policy,
then either has the target's daemon start the service and tells our agent where to connect
(VM -> VM, disposables), or runs a dom0 service itself in a forked child (VM -> dom0).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import TYPE_CHECKING

from ..protocol.channel import NEED_DATA, DaemonSession, Hello, PortAnswer
from ..protocol.constants import (
    CLIENT_PROTOCOL_VERSION,
    DOM0_NAMES,
    EXIT_PROBLEM,
    EXIT_REQUEST_REFUSED,
    MsgType,
)
from ..protocol.errors import RemoteProtocolError
from ..protocol.wire import hello, pack_exec
from ..qubesd.client import QubesdError
from ..qubesd.client_async import call_async
from ..system.child_exits import wait_exit
from ..system.forking import fork_call
from ..transport.aio import open_unix
from ..transport.feed import read_stream_message
from .call_audit import CallAudit, read_traffic, write_traffic
from .policy_answer import ANSWER_LIMIT, Malformed, PolicyAnswer, parse_answer, request_text

if TYPE_CHECKING:
    from .daemon import Daemon, PendingRequest

__all__ = ["call_worker"]

_LOG = logging.getLogger(__name__)

#: how long a request may wait for a data port of a busy target while none of this daemon's
#: requests to it gets one (docs/daemon.md "Data ports"): long enough for one of a burst of
#: short calls to end even when hundreds of callers starting at once compete for the CPU,
#: short enough that a caller flooding the target with calls that never end is refused
#: within seconds
BUSY_WAIT = 5.0
#: the longest any request waits for a port, however steadily ports come free: a burst of
#: hundreds of short calls is served in full, none waits without bound
BUSY_WAIT_MAX = 60.0
#: the longest pause between two attempts within `BUSY_WAIT`
_BUSY_PAUSE_MAX = 0.25


class WorkerFailure(Exception):
    """The call cannot go on; the worker ends with `status` (REFUSED unless answered)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def call_worker(daemon: Daemon, pending: PendingRequest) -> int:
    """Run one request; 0 = answered with an allow (or the dom0 service ran)."""
    audit = CallAudit()
    try:
        answer = await _ask_policy(daemon, pending, audit)
        if not answer.allow:
            return EXIT_REQUEST_REFUSED
        audit.allowed(answer)
        for line in answer.ignored:
            _LOG.info(f"ignoring policy answer line {line!r}")
        status = await _execute(daemon, pending, answer, audit)
    except WorkerFailure as err:
        # a domain can repeat its calls, and so their failures, at will
        daemon.log_repeated(str(err))
        status = err.status
    audit.ended(status)
    return status


# -- asking the policy --------------------------------------------------------------------
async def _ask_policy(daemon: Daemon, pending: PendingRequest,
                      audit: CallAudit) -> PolicyAnswer:
    req = pending.request
    text = request_text(daemon.opts.name, req.target, req.service, req.source)
    path = daemon.opts.env.policy_socket
    try:
        reader, writer = await asyncio.open_unix_connection(sock=await audit.connect(path))
    except OSError as err:
        daemon.log_repeated(f"cannot connect to the policy daemon at {path}: {err.strerror}")
    else:
        try:
            writer.write(text)
            await writer.drain()
            data = await reader.read(ANSWER_LIMIT + 1)
            while len(data) <= ANSWER_LIMIT and (more := await reader.read(ANSWER_LIMIT)):
                data += more
            answer = parse_answer(data)
            audit.policy_socket = path
            return answer
        except (OSError, Malformed) as err:
            daemon.log_repeated(f"bad answer from the policy daemon: {err}")
        finally:
            writer.close()
    if req.source:
        raise WorkerFailure(EXIT_REQUEST_REFUSED,
                            "requested source given: not falling back to the policy program")
    return await _ask_policy_program(daemon, req.target, req.service)


async def _ask_policy_program(daemon: Daemon, target: str, service: str) -> PolicyAnswer:
    ours, theirs = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            daemon.opts.policy_program, "--", daemon.opts.name, target, service,
            stdin=theirs.fileno(), stdout=theirs.fileno(),
        )
    except OSError as err:
        ours.close()
        raise WorkerFailure(EXIT_PROBLEM,
                            f"cannot run {daemon.opts.policy_program}: {err}") from err
    finally:
        theirs.close()
    ours.setblocking(False)
    loop = asyncio.get_running_loop()
    data = b""
    try:
        while len(data) <= ANSWER_LIMIT and (chunk := await loop.sock_recv(ours, 4096)):
            data += chunk
    finally:
        ours.close()
    status = await proc.wait()
    if status != 0:
        raise WorkerFailure(EXIT_PROBLEM, f"policy program exited with {status}")
    try:
        return parse_answer(data)
    except Malformed as err:
        raise WorkerFailure(EXIT_PROBLEM,
                            f"malformed answer of the policy program: {err}") from err


# -- carrying out an allow -----------------------------------------------------------------
async def _execute(daemon: Daemon, pending: PendingRequest, answer: PolicyAnswer,
                   audit: CallAudit) -> int:
    assert answer.target is not None and answer.user is not None
    service = answer.service or pending.request.service
    target = answer.target
    source = answer.policy_source or daemon.opts.name
    if target in DOM0_NAMES and answer.target_uuid is None:
        return await _call_dom0(daemon, pending, answer, service, audit)
    if "+" not in service:
        service += "+"
    cmd = f"{answer.user}:QUBESRPC {service} {source}".encode() + b"\0"
    if target.startswith("@dispvm:"):
        return await _call_dispvm(daemon, pending, answer, cmd)
    dest = answer.target_uuid or target
    domid, port, _reader, writer = await _exec_in(daemon, dest, cmd, answer.autostart)
    writer.close()
    await daemon.service_connect(pending, domid, port)
    return 0


#: a connection to a daemon's socket after the HELLO exchange
_Opened = tuple[asyncio.StreamReader, asyncio.StreamWriter, DaemonSession]


async def _open_daemon(daemon: Daemon, dest: str) -> _Opened | None:
    path = os.path.join(daemon.opts.socket_dir, f"qrexec.{dest}")
    try:
        reader, writer = await open_unix(path)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ECONNREFUSED):
            return None
        raise WorkerFailure(EXIT_PROBLEM, f"cannot connect to {path}: {err}") from err
    session = DaemonSession()
    try:
        if not isinstance(await read_stream_message(reader, session, NEED_DATA), Hello):
            raise EOFError("closed before its HELLO")
        writer.write(hello(CLIENT_PROTOCOL_VERSION))
    except (OSError, EOFError, RemoteProtocolError) as err:
        writer.close()
        raise WorkerFailure(EXIT_PROBLEM, f"handshake with {path} failed: {err}") from err
    return reader, writer, session


async def _exec_in(
    daemon: Daemon, dest: str, cmd: bytes, autostart: bool
) -> tuple[int, int, asyncio.StreamReader, asyncio.StreamWriter]:
    """EXEC_CMDLINE{own domid, 0} + cmd to `dest`'s daemon: target domid, port, socket.

    A target daemon that has no port for us (its half of the table is full, or we hold our
    share of it) closes the connection without an answer. One of those ports may come free
    soon, so the request is repeated, with growing pauses, as long as some request of ours
    to `dest` got a port within the last `BUSY_WAIT` seconds (the calls holding them are
    ending: a burst is being served), for `BUSY_WAIT_MAX` at most; then the call is refused
    like a denied one.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    pause = 0.01
    while True:
        reader, writer, session = await _open_target(daemon, dest, autostart)
        try:
            writer.write(pack_exec(MsgType.EXEC_CMDLINE, daemon.opts.domid, 0, cmd))
            session.expect_answer(MsgType.EXEC_CMDLINE)
            answer = await read_stream_message(reader, session, NEED_DATA)
            if isinstance(answer, PortAnswer):
                daemon.port_granted[dest] = loop.time()
                return answer.domain, answer.port, reader, writer
            # closed without an answer: no port for us now
            writer.close()
            progress = max(start, daemon.port_granted.get(dest, start))
            deadline = min(progress + BUSY_WAIT, start + BUSY_WAIT_MAX)
            if loop.time() + pause > deadline:
                raise WorkerFailure(
                    EXIT_REQUEST_REFUSED,
                    f"no data port in {dest} for {daemon.opts.name} within {BUSY_WAIT:g} s, "
                    "refusing the call")
        except (OSError, RemoteProtocolError) as err:
            writer.close()
            raise WorkerFailure(EXIT_PROBLEM, f"exec request to {dest} failed: {err}") from err
        await asyncio.sleep(pause)
        pause = min(pause * 2, _BUSY_PAUSE_MAX)


async def _open_target(daemon: Daemon, dest: str, autostart: bool) -> _Opened:
    """The target's daemon socket after HELLO; starts the target first if allowed."""
    opened = await _open_daemon(daemon, dest)
    if opened is None:
        if not autostart:
            raise WorkerFailure(EXIT_PROBLEM, f"target {dest} is not running")
        await _qubesd(daemon, "admin.vm.Start", dest, ok_errors=("QubesVMNotHaltedError",))
        opened = await _open_daemon(daemon, dest)
        if opened is None:
            raise WorkerFailure(EXIT_PROBLEM, f"target {dest} did not start")
    return opened


async def _qubesd(daemon: Daemon, method: str, dest: str, payload: bytes = b"",
                  ok_errors: tuple[str, ...] = ()) -> bytes:
    try:
        return await call_async(method, dest, payload=payload,
                                path=daemon.opts.env.qubesd_socket)
    except QubesdError as err:
        if err.exc_type and err.exc_type in ok_errors:
            return b""
        raise WorkerFailure(EXIT_PROBLEM, f"{method} {dest} failed: {err}") from err


async def _call_dispvm(daemon: Daemon, pending: PendingRequest, answer: PolicyAnswer,
                       cmd: bytes) -> int:
    if not answer.autostart:
        raise WorkerFailure(EXIT_PROBLEM, "disposable target without autostart")
    assert answer.target is not None
    template = answer.target[len("@dispvm:"):]
    tu = answer.target_uuid or ""
    with_uuid = tu.startswith("@dispvm:uuid:")
    dest = tu[len("@dispvm:"):] if with_uuid else template
    created = await _qubesd(daemon, "admin.vm.CreateDisposable", dest,
                            payload=b"uuid" if with_uuid else b"")
    if b"\0" in created or not created or (
        with_uuid and not (created.startswith(b"uuid:") and len(created) == 41)
    ):
        raise WorkerFailure(EXIT_PROBLEM, f"unexpected CreateDisposable answer {created!r}")
    disp = created.decode("ascii", errors="replace")
    try:
        await _qubesd(daemon, "admin.vm.Start", disp, ok_errors=("QubesVMNotHaltedError",))
        domid, port, reader, writer = await _exec_in(daemon, disp, cmd, False)
        try:
            await daemon.service_connect(pending, domid, port)
            # the disposable's daemon closes this socket when the call's port is released
            while await reader.read(4096):
                pass
        finally:
            writer.close()
    finally:
        try:
            await call_async("admin.vm.Kill", disp, path=daemon.opts.env.qubesd_socket)
        except QubesdError as err:
            _LOG.info(f"cannot kill disposable {disp}: {err}")
    return 0


async def _call_dom0(daemon: Daemon, pending: PendingRequest, answer: PolicyAnswer,
                     service: str, audit: CallAudit) -> int:
    requested = answer.requested_target or "dom0"
    kind, name = ("keyword", requested[1:]) if requested.startswith("@") else ("name", requested)
    if "+" not in service:
        service += "+"
    # a relayed call is the RemoteVM's (docs/remote.md), not the relay's
    source = answer.policy_source or daemon.opts.name
    cmd = f"QUBESRPC {service} {source} {kind} {name}".encode()
    port = await daemon.service_connect(pending, 0, 0)
    if port is None:
        raise WorkerFailure(EXIT_PROBLEM, "no data port for a call to dom0, refusing it")
    status = await _run_forked(daemon, cmd, port, audit)
    if status != 0:
        # the request is answered already: this only gets logged
        # (docs/reference/protocol.md#vm-to-dom0 step 5)
        _LOG.info(f"dom0 service {service} from {daemon.opts.name} failed with {status}")
    return status


async def _run_forked(daemon: Daemon, cmd: bytes, port: int, audit: CallAudit) -> int:
    """Run the dom0 side of a VM -> dom0 call in a child process; its exit status. The
    child tells `audit` how much data it relayed."""
    from ..call.dom0_service import (  # lazy: dom0 calls only; ~0.4 MiB in an idle daemon
        WORKER_CONNECT_TIMEOUT,
        run_dom0_service,
    )

    counts, told = os.pipe()
    os.set_blocking(counts, False)  # a child that wrote nothing must not hold us up

    def body() -> int:
        result = run_dom0_service(cmd, daemon.opts.domid, port, env=daemon.opts.env,
                                  timeout=WORKER_CONNECT_TIMEOUT, log=_LOG.info,
                                  own_version=daemon.opts.own_version)
        write_traffic(told, result.traffic)
        return result.worker_status

    try:
        try:
            pid = fork_call(body, _LOG.info, keep=(told,))
        finally:
            os.close(told)
        status = await wait_exit(pid)
        audit.traffic = read_traffic(counts)
    finally:
        os.close(counts)
    return status
