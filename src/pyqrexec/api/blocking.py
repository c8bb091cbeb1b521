"""Whole dom0 calls for the blocking client, without an event loop
(docs/client-library.md#the-blocking-clients).

`Dom0Client.run` is the call a dom0 tool makes most: send some input, take all the output
and the status. Driving that through asyncio cost about as much CPU as the rest of the
call in this process. Here the same pieces the CLIs and `ChannelCall` use (`Relay` for the
send queue and the channel's messages, `CallerOrder` for when the STDIN EOF goes, the same
helpers in the same order) run under one `poll()` loop, so the bytes on the channel are the
same as the asyncio path's and `qrexec-client`'s.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Iterator

from ..call.relay import Relay, caller_result, queue_opening
from ..client.daemon_socket import DaemonNotRunning as _NotRunning
from ..client.daemon_socket import read_answer, read_hello, send_request
from ..protocol.constants import EXIT_PROBLEM, MsgType
from ..protocol.data import Action, CallerOrder, CallerStream
from ..protocol.errors import ProtocolError
from ..system.environment import Environment
from ..transport import vchan
from .calls import EOF_WAIT, log_problem, take_messages
from .errors import CallResult, CallTimeout, DaemonNotRunning, SetupFailed

__all__ = ["run_in_domain"]

#: input is queued this many messages ahead of what the channel took
_AHEAD = 32


def run_in_domain(env: Environment, socket_dir: str, vchan_dir: str, own_domain: int,
                  connect_timeout: float | None, domain: str, command: str,
                  input: bytes | None, timeout: float | None) -> CallResult:
    """`AsyncDom0Client.run` for a domain other than dom0, blocking."""
    deadline = None if timeout is None else time.monotonic() + timeout
    # HELLO and request in one write, as qrexec-client (docs/architecture.md#a-calls-start)
    talk = f"cannot talk to the qrexec daemon of {domain}"
    with _failing_as(talk, timeout):
        sock = send_request(socket_dir, domain, MsgType.EXEC_CMDLINE, 0,
                            os.fsencode(command) + b"\0")
    try:
        with _failing_as(talk, timeout):
            sock.settimeout(_left(deadline, timeout))
            session = read_hello(sock, MsgType.EXEC_CMDLINE)
        with _failing_as(f"request to the qrexec daemon of {domain} failed", timeout):
            sock.settimeout(_left(deadline, timeout))
            remote, port = read_answer(sock, session)
    finally:
        sock.close()
    wait = _left(deadline, timeout)
    listener, path = vchan.listen(vchan_dir, own_domain, remote, port,
                                  pair_dirs=env.vchan_pair_dirs)
    try:
        channel = vchan.accept_one(listener, path, _sooner(wait, connect_timeout))
    except OSError as err:
        if isinstance(err, TimeoutError) and wait is not None and (
                connect_timeout is None or wait < connect_timeout):
            raise CallTimeout.after(timeout) from None
        raise SetupFailed(f"data vchan connection failed: {err}", EXIT_PROBLEM) from err
    return _relay(channel, env.max_protocol_version, input, deadline, timeout)


@contextlib.contextmanager
def _failing_as(what: str, timeout: float | None) -> Iterator[None]:
    """What the asyncio path raises for a failure in setting the call up."""
    try:
        yield
    except _NotRunning as err:
        raise DaemonNotRunning(str(err.strerror)) from err
    except TimeoutError:
        raise CallTimeout.after(timeout) from None
    except (OSError, EOFError, ValueError, ProtocolError) as err:
        raise SetupFailed(f"{what}: {err}", EXIT_PROBLEM) from err


def _left(deadline: float | None, timeout: float | None) -> float | None:
    """Seconds left before `deadline` (TimeoutError when none are)."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise CallTimeout.after(timeout)
    return left


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _relay(channel: socket.socket, own_version: int, input: bytes | None,
           deadline: float | None, timeout: float | None) -> CallResult:
    call = _Call(channel, own_version, input)
    try:
        call.run(deadline, timeout)
    finally:
        channel.close()
    result = caller_result(call.relay, call.order.status)
    status = EXIT_PROBLEM if result.no_hello else result.exit_status
    return CallResult(status, bytes(call.out), bytes(call.err))


class _Call:
    """One call's caller side; `ChannelCall` with its streams collected in memory."""

    def __init__(self, channel: socket.socket, own_version: int, input: bytes | None) -> None:
        self.relay = Relay(channel, own_version, log_problem, CallerStream)
        self.order = CallerOrder(input is not None)
        self.out = bytearray()
        self.err = bytearray()
        self.input = memoryview(input or b"")
        #: more input may go out (its EOF has not been queued)
        self.input_open = input is not None
        self.started = False
        self.stdout_ended = False
        self.stderr_ended = False

    def run(self, deadline: float | None, timeout: float | None) -> None:
        relay = self.relay
        poller = select.poll()
        relay.flush()
        while not self._over():
            events = select.POLLIN
            if relay.outq and not relay.send_failed:
                events |= select.POLLOUT
            poller.register(relay.chfd, events)
            if not poller.poll(self._wait_ms(deadline)):
                if deadline is not None and time.monotonic() >= deadline:
                    raise CallTimeout.after(timeout, bytes(self.out), bytes(self.err))
                continue
            self._readable()
            self._feed()
            relay.flush()
        self._finish()

    def _over(self) -> bool:
        """Before EXIT_CODE: over at the channel's EOF; after it, once stdout has ended."""
        relay = self.relay
        if relay.failed is not None or relay.channel_eof:
            return True
        return self.order.exit_seen and self.stdout_ended

    def _readable(self) -> None:
        relay, order = self.relay, self.order
        if take_messages(relay, order, self._received):
            self.input_open = False
        if relay.version and not self.started:
            self.started = True
            queue_opening(relay, order)

    def _received(self, action: Action, payload: memoryview) -> None:
        if action is Action.OUTPUT:
            self.out += payload
        elif action is Action.OUTPUT_EOF:
            self.stdout_ended = True
        elif action is Action.ERROR:
            # stderr bytes after the stderr EOF have no stream left to go to
            if not self.stderr_ended:
                self.err += payload
        elif action is Action.ERROR_EOF:
            self.stderr_ended = True
        elif action is Action.EXIT:
            self.order.exit_code(bytes(payload))

    def _feed(self) -> None:
        """Queue input once the HELLO fixed the chunk size, a few messages ahead."""
        relay = self.relay
        if not (self.started and self.input_open) or relay.send_failed:
            self.input_open = self.input_open and not relay.send_failed
            return
        if len(relay.outq) > _AHEAD:
            return
        n = relay.limit * _AHEAD
        if self.input:
            relay.queue_payload(MsgType.DATA_STDIN, self.input[:n])
            self.input = self.input[n:]
        if not self.input:
            relay.queue_message(MsgType.DATA_STDIN)
            self.order.input_ended()
            self.input_open = False

    def _finish(self) -> None:
        """The STDIN EOF after an EXIT_CODE goes out unless the service side has closed the
        channel; a peer that neither reads nor closes is given `EOF_WAIT`."""
        relay = self.relay
        if not (self.order.exit_seen and relay.outq and not relay.send_failed):
            relay.flush()
            return
        deadline = time.monotonic() + EOF_WAIT
        poller = select.poll()
        poller.register(relay.chfd, select.POLLOUT)
        while relay.outq and not relay.send_failed and time.monotonic() < deadline:
            poller.poll(self._wait_ms(deadline))
            relay.flush()

    @staticmethod
    def _wait_ms(deadline: float | None) -> int:
        if deadline is None:
            return -1
        return max(0, int((deadline - time.monotonic()) * 1000) + 1)
