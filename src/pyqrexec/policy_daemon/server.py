"""The policy daemon's sockets: requests (docs/reference/policy.md#policy-daemon-socket) and
policy.EvalSimple/EvalGUI (docs/reference/policy.md#evalsimple-and-evalgui).

One task per request, so an open ask dialog never holds up another request. The request socket
is the hot path and uses bare non-blocking sockets with reader callbacks; the Eval sockets use
streams.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Coroutine
from typing import Any

from ..policy.audit import (
    CallIds,
    ReportError,
    audit_socket_for,
    call_id_from_address,
    parse_end_report,
)
from ..policy.errors import SystemInfoError
from ..policy.evaluation import Request, split_service
from ..policy.wire import (
    MAX_EVAL_BODY,
    MAX_REQUEST_SIZE,
    RequestError,
    parse_eval_body,
    parse_eval_header,
    parse_request,
    request_end,
)
from ..transport.aio import BackgroundTasks
from ..transport.unixsock import listen_unix
from .engine import PolicyEngine

__all__ = ["PolicyServer"]

_MAX_HEADER = 4096
_BACKLOG = 128
_RECV_SIZE = 65536
#: allowed calls whose end may still be reported (the oldest are forgotten first)
_MAX_PENDING_ENDS = 65536
_MAX_REPORT = 1024
_REPORT_TIMEOUT = 10.0


async def _read_eval(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The service header (up to its NUL) and at most `MAX_EVAL_BODY` bytes of body."""
    try:
        header = await reader.readuntil(b"\0")
    except asyncio.IncompleteReadError as err:
        raise RequestError("header not NUL-terminated") from err
    except asyncio.LimitOverrunError as err:
        raise RequestError("header too long") from err
    body = b""
    while len(body) < MAX_EVAL_BODY and (chunk := await reader.read(MAX_EVAL_BODY - len(body))):
        body += chunk
    return header[:-1], body


class _RequestConnection:
    """One policy request per connection (docs/reference/policy.md#policy-daemon-socket) on a bare
    non-blocking socket.

    The request has usually arrived by the time the connection is accepted, so it is read at
    once; the reader callback is only registered when it has not.
    """

    def __init__(
        self, server: PolicyServer, loop: asyncio.AbstractEventLoop, sock: socket.socket,
        address: object,
    ) -> None:
        # a pyqrexec qrexec-daemon names the call in its socket's address; it may report the
        # call's end later under that id
        self.reported_id = call_id_from_address(address) if server.auditing else None
        self.server = server
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.buffer = b""
        self.started = False
        self.reading = False
        self.answer = memoryview(b"")
        self._receive()

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(_RECV_SIZE)
            except BlockingIOError:
                if not self.reading:
                    self.reading = True
                    self.loop.add_reader(self.fd, self._receive)
                return
            except OSError:
                self._close()
                return
            if self.started:  # bytes after the request are ignored
                if not data:
                    self._stop_reading()
                    return
                continue
            if not data:
                self._stop_reading()
                self._start(self.buffer)
                return
            self.buffer += data
            end = request_end(self.buffer)
            if end is not None:
                self._start(self.buffer[:end])
            elif len(self.buffer) > MAX_REQUEST_SIZE:
                self._reject(RequestError("request too long"), self.buffer)
                return

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def _reject(self, err: RequestError, data: bytes) -> None:
        self.started = True
        self.server.log.warning("error parsing policy request: %s", err)
        self.server.refused(self.reported_id, data, err)
        self._close()

    def _start(self, data: bytes) -> None:
        try:
            request = parse_request(data)
        except RequestError as err:
            self._reject(err, data)
            return
        self.started = True
        self.server.spawn(self._answer(request))

    async def _answer(self, request: Request) -> None:
        answer = b"result=deny\n"
        server = self.server
        call = None
        if server.auditing:
            call = self.reported_id or server.new_call_id()
        try:
            outcome = await server.engine.evaluate(request, call)
            if outcome.lines:
                answer = outcome.answer.encode()
            if outcome.allowed and self.reported_id is not None:
                server.expect_end(self.reported_id, request, outcome.lines)
        except Exception:  # a bug must not leave the caller waiting: deny, and say why
            self.server.log.exception("error evaluating %s", request)
        finally:
            self.answer = memoryview(answer)
            self._send()

    def _send(self) -> None:
        if self.fd < 0:
            return
        try:
            while self.answer:
                self.answer = self.answer[self.sock.send(self.answer) :]
        except BlockingIOError:
            self.loop.add_writer(self.fd, self._send)
            return
        except OSError:
            pass
        self._close()

    def _close(self) -> None:
        if self.fd < 0:
            return
        self._stop_reading()
        self.loop.remove_writer(self.fd)
        self.fd = -1
        self.sock.close()


class PolicyServer:
    def __init__(self, engine: PolicyEngine, log: logging.Logger) -> None:
        self.engine = engine
        self.log = log
        self._tasks = BackgroundTasks()
        self.auditing = engine.audit is not None
        self.new_call_id = CallIds()
        #: call id -> (source, target, service, argument) of allowed calls not ended yet
        self._ends: dict[str, tuple[str, str | None, str, str]] = {}

    # -- the audit trail ------------------------------------------------------------------

    def refused(self, call: str | None, data: bytes, err: RequestError) -> None:
        """A request that could not be parsed is in the trail too, escaped like any name."""
        if self.engine.audit is not None:
            self.engine.audit.write({
                "event": "refused",
                "call": call or self.new_call_id(),
                "reason": str(err),
                "request": data[:1024].decode("utf-8", errors="backslashreplace"),
            })

    def expect_end(self, call: str, request: Request, lines: list[str]) -> None:
        if len(self._ends) >= _MAX_PENDING_ENDS:
            del self._ends[next(iter(self._ends))]
        target = next((line[7:] for line in lines if line.startswith("target=")), None)
        service, argument = split_service(request.service_and_arg)
        self._ends[call] = (request.source, target, service, argument)

    async def handle_report(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One end report per connection; anything we do not understand is dropped."""
        try:
            async with asyncio.timeout(_REPORT_TIMEOUT):
                data = await reader.read(_MAX_REPORT + 1)
                while len(data) <= _MAX_REPORT and (more := await reader.read(_MAX_REPORT)):
                    data += more
            report = parse_end_report(data)
        except (OSError, TimeoutError, ReportError):
            return
        finally:
            writer.close()
        audit = self.engine.audit
        if audit is None:
            return
        source, target, service, argument = self._ends.pop(report.call, (None, None, None, None))
        audit.write({
            "event": "end",
            "call": report.call,
            "source": source,
            "target": target,
            "service": service,
            "argument": argument,
            "scope": report.scope,
            "duration_ms": report.duration_ms,
            "status": report.status,
            "bytes_in": report.bytes_in,
            "bytes_out": report.bytes_out,
        })

    def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(_BACKLOG):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as err:  # out of descriptors, say: pause instead of spinning
                self.log.warning("cannot accept a policy request: %s", err)
                loop.remove_reader(listener.fileno())
                loop.call_later(1.0, loop.add_reader, listener, self._accept, listener)
                return
            sock.setblocking(False)
            _RequestConnection(self, loop, sock, address)

    async def _serve_requests(self, listener: socket.socket) -> None:
        """The request socket, served with bare sockets (the hot path), until cancelled."""
        loop = asyncio.get_running_loop()
        loop.add_reader(listener.fileno(), self._accept, listener)
        try:
            await loop.create_future()
        finally:
            loop.remove_reader(listener.fileno())
            listener.close()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task that is kept referenced until it ends."""
        self._tasks.start(coro)

    async def handle_eval(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gui: bool
    ) -> None:
        service = "policy.EvalGUI" if gui else "policy.EvalSimple"
        try:
            try:
                header, body = await _read_eval(reader)
                queried, remote = parse_eval_header(header, service)
                source, target = parse_eval_body(body)
                if gui:
                    await self._check_gui(remote, source, target)
            except RequestError as err:
                self.log.warning("invalid %s call: %s", service, err)
                return
            request = Request(source, target, queried, "", True, True)
            outcome = await self.engine.evaluate(request)
            writer.write(b"result=allow\n" if outcome.allowed else b"result=deny\n")
            await writer.drain()
        except OSError as err:
            self.log.warning("%s connection failed: %s", service, err)
        finally:
            writer.close()

    async def _check_gui(self, remote: str, source: str, target: str) -> None:
        """EvalGUI: both qubes must exist and carry `guivm-REMOTE`
        (docs/reference/policy.md#evalsimple-and-evalgui step 4)."""
        try:
            info = await self.engine.system_info.get()
        except SystemInfoError as err:
            raise RequestError(f"no system info: {err}") from err
        tag = "guivm-" + remote
        for name in (source, target):
            d = info.get(name)
            if d is None or tag not in d.tags:
                raise RequestError(f"{name} is not managed by {remote}")

    async def serve(self, policy_socket: str, eval_socket: str, gui_socket: str) -> None:
        """Listen on the three sockets (mode 0660, stale files removed) and serve forever.

        With the audit trail, a fourth socket beside the request socket takes end reports;
        its presence tells a qrexec-daemon that it may send them.
        """
        sockets = [policy_socket, eval_socket, gui_socket]
        audit = self.engine.audit
        if audit is not None:
            sockets.append(audit_socket_for(policy_socket))
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, audit.reopen)
        # each socket appears under its name only once it listens with its mode: a
        # qrexec-daemon that finds the file never meets ECONNREFUSED (and falls back to the
        # policy program) or a moment of the default mode
        listeners = [listen_unix(path, mode=0o660, backlog=_BACKLOG) for path in sockets]
        listener = listeners[0]
        listener.setblocking(False)
        servers = [
            await asyncio.start_unix_server(
                lambda r, w: self.handle_eval(r, w, gui=False), sock=listeners[1],
                limit=_MAX_HEADER
            ),
            await asyncio.start_unix_server(
                lambda r, w: self.handle_eval(r, w, gui=True), sock=listeners[2],
                limit=_MAX_HEADER
            ),
        ]
        if audit is not None:
            servers.append(
                await asyncio.start_unix_server(self.handle_report, sock=listeners[3],
                                                limit=_MAX_HEADER)
            )
        self.log.info("policy daemon listening on %s", policy_socket)
        await asyncio.gather(self._serve_requests(listener), *(s.serve_forever() for s in servers))
