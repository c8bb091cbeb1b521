"""How calls end where a caller can tell pyqrexec from upstream Qubes (docs/differences.md
lists the places where it deliberately differs): socket services' two directions and their
rpc-config (docs/reference/services.md#socket-services), qrexec-client-vm with a LOCAL_PROGRAM
(docs/reference/protocol.md#end-of-a-call, docs/reference/protocol.md#caller-exit-status).
Raw peers on the data channel face the real agent, daemon and qrexec-client-vm.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import HEADER

from .fixtures.hostile import read_until_eof, recv_exact, start_attacked_daemon
from .fixtures.processes import QrexecHost, wait_for
from .fixtures.rawcalls import (
    DATA_TIMEOUT,
    as_caller,
    as_dom0_caller,
    as_target,
    children,
    data_handshake,
    read_messages,
    split_messages,
)
from .fixtures.world import World
from .test_scenarios_c import rpc_config

STDIN, STDOUT, STDERR, EXIT = (MsgType.DATA_STDIN, MsgType.DATA_STDOUT, MsgType.DATA_STDERR,
                               MsgType.DATA_EXIT_CODE)
STATUS_0 = struct.pack("<i", 0)


def msg(t: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(t, len(payload)) + payload


class SocketService:
    """A Unix socket service at `path` that serves one connection with `serve` in a thread."""

    def __init__(self, path: Path, serve: Callable[[socket.socket], None]) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.listener.settimeout(DATA_TIMEOUT)
        self.thread = threading.Thread(target=self._run, args=(serve,), daemon=True)
        self.thread.start()

    def _run(self, serve: Callable[[socket.socket], None]) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(DATA_TIMEOUT)
            serve(conn)

    def join(self) -> None:
        self.thread.join(DATA_TIMEOUT)
        assert not self.thread.is_alive(), "the socket service did not finish"

    def close(self) -> None:
        self.listener.close()


def read_descriptor(conn: socket.socket) -> bytes:
    """The service descriptor the service side writes first, up to and with its NUL."""
    data = b""
    while not data.endswith(b"\0"):
        data += recv_exact(conn, 1)
    return data


def messages_until(chan: socket.socket, last: tuple[int, bytes]) -> list[tuple[int, bytes]]:
    """Messages up to and with `last` (a timeout fails the test)."""
    out: list[tuple[int, bytes]] = []
    while not out or out[-1] != last:
        t, n = HEADER.unpack(recv_exact(chan, 8))
        out.append((t, recv_exact(chan, n)))
    return out


# -- socket services ---------------------------------------------------------------------------
def test_exit_on_client_eof_ends_the_call_at_the_callers_eof(host: QrexecHost) -> None:
    """rpc-config `exit-on-client-eof = true`: the caller's stdin EOF ends the call (stdout
    EOF, exit code 0) while the socket service still holds its connection open."""
    world = World(host)
    dom = world.domain("work", 5)
    rpc_config(world, "work", "test.Sock", "exit-on-client-eof = true\n")
    release = threading.Event()
    received: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        received.append(read_until_eof(conn))
        # neither writes nor closes until the test is done (longer than the caller waits)
        release.wait(DATA_TIMEOUT * 3)

    service = SocketService(world.rpc_dir("work") / "test.Sock", serve)
    try:
        with as_caller(dom, b"root:QUBESRPC test.Sock dom0") as chan:
            assert data_handshake(chan, 4) == 4
            chan.sendall(msg(STDIN, b"hi") + msg(STDIN))
            got = read_messages(chan)
            assert not release.is_set()
            # the service reads its input to EOF on its own time: wait before closing it
            wait_for(lambda: bool(received), DATA_TIMEOUT, "the service to read its input")
    finally:
        release.set()
        service.close()
    service.join()
    assert got[-1] == (EXIT, STATUS_0)
    assert (STDOUT, b"") in got and (STDERR, b"") in got
    assert received == [b"test.Sock dom0\0hi"]


def half_closing_service(received: list[bytes]) -> Callable[[socket.socket], None]:
    """Replies `early`, shuts its write side down, then reads what comes until EOF."""

    def serve(conn: socket.socket) -> None:
        read_descriptor(conn)
        conn.sendall(b"early")
        conn.shutdown(socket.SHUT_WR)
        received.append(read_until_eof(conn))

    return serve


@contextlib.contextmanager
def socket_service_call(host: QrexecHost, where: str) -> Iterator[socket.socket]:
    """The caller's end of a call to the socket service `test.Sock` in dom0 (from `work`, a
    fake agent behind a real daemon) or in `work` (from dom0, a real agent)."""
    world = World(host)
    if where == "vm":
        dom = world.domain("work", 5)
        with as_caller(dom, b"root:QUBESRPC test.Sock dom0") as chan:
            yield chan
        return
    env = {"QREXEC_POLICY_SOCKET": str(host.root / "no-policy.sock"),
           "QREXEC_SERVICE_PATH": str(world.rpc_dir("dom0"))}
    vm, agent = start_attacked_daemon(host, 4, name="work", domid=5, env=env,
                                      extra=[f"--policy-program={world.policy_program}"])
    with as_dom0_caller(vm, agent, b"test.Sock", b"SOCKET11") as chan:
        yield chan


@pytest.mark.parametrize("where", ["dom0", "vm"])
def test_socket_service_half_close_keeps_its_stdin(host: QrexecHost, where: str) -> None:
    """A socket service that shuts down its write side: the caller gets stdout EOF, and what
    the caller sends afterwards still reaches the service; exit code 0 once both are done."""
    rpc = World(host).rpc_dir("dom0" if where == "dom0" else "work")
    received: list[bytes] = []
    service = SocketService(rpc / "test.Sock", half_closing_service(received))
    try:
        with socket_service_call(host, where) as chan:
            assert data_handshake(chan, 4) == 4
            before = messages_until(chan, (STDOUT, b""))
            assert b"".join(p for t, p in before if t == STDOUT) == b"early"
            assert EXIT not in [t for t, _ in before]
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                chan.sendall(msg(STDIN, b"late") + msg(STDIN))
            after = read_messages(chan)
        service.join()
    finally:
        service.close()
    assert received == [b"late"]
    assert after[-1] == (EXIT, STATUS_0)


def test_exit_on_service_eof_ends_the_call_at_the_sockets_eof(host: QrexecHost) -> None:
    """rpc-config `exit-on-service-eof = true`: the socket's EOF ends the call at once (the
    service's input is closed too), without waiting for the caller's stdin EOF."""
    world = World(host)
    dom = world.domain("work", 5)
    rpc_config(world, "work", "test.Sock", "exit-on-service-eof = true\n")
    received: list[bytes] = []
    service = SocketService(world.rpc_dir("work") / "test.Sock", half_closing_service(received))
    try:
        with as_caller(dom, b"root:QUBESRPC test.Sock dom0") as chan:
            assert data_handshake(chan, 4) == 4
            got = read_messages(chan)
        service.join()
    finally:
        service.close()
    assert b"".join(p for t, p in got if t == STDOUT) == b"early"
    assert got[-2:] == [(STDOUT, b""), (EXIT, STATUS_0)]
    assert received == [b""]


# -- qrexec-client-vm with a LOCAL_PROGRAM -------------------------------------------------------
OpenChannel = Callable[[], contextlib.AbstractContextManager[socket.socket]]


def call_fake_target(host: QrexecHost, *args: str) -> tuple[subprocess.Popen[bytes], OpenChannel]:
    """work runs `qrexec-client-vm ARGS` against personal, a fake agent; the second item opens
    the service side of that call's data channel."""
    world = World(host)
    world.domain("work", 5)
    target, agent = start_attacked_daemon(host, 4, name="personal", domid=6)
    proc = world.start_call("work", *args, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, lambda: as_target(agent, target.domid)


def only_child(pid: int) -> int:
    wait_for(lambda: len(children(pid)) == 1, DATA_TIMEOUT, f"the child of {pid}")
    return children(pid)[0]


def process_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("local", [["/bin/cat"], ["/bin/sleep", "60"]], ids=["cat", "sleep"])
def test_client_vm_exits_when_the_target_vanishes(host: QrexecHost, local: list[str]) -> None:
    """The data channel closes without an exit code: qrexec-client-vm exits 255 at once,
    whether or not its local program is still running."""
    proc, open_target = call_fake_target(host, "personal", "test.Svc", *local)
    program = only_child(proc.pid)
    try:
        with open_target() as chan:
            assert data_handshake(chan, 4) == 4
        try:
            status = proc.wait(DATA_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("qrexec-client-vm waits for its local program") from None
        assert status == 255
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(program, signal.SIGKILL)


def test_client_vm_sends_one_stdin_eof_when_its_program_fails(host: QrexecHost) -> None:
    """The local program fails while the target sends stdout EOF and exit code 0: the caller
    sends at most one empty STDIN and never an exit code; it exits with the program's 1.

    qrexec-client-vm is stopped while the program exits and the target's messages arrive,
    so it sees both at once (the order in which a busy host may see them)."""
    fifo = host.root / "go"
    os.mkfifo(fifo)
    proc, open_target = call_fake_target(
        host, "-p", "p", "personal", "test.Svc", "/bin/sh", "-c", f"read x <{fifo}; exit 1")
    program = only_child(proc.pid)
    try:
        with open_target() as chan:
            assert data_handshake(chan, 4) == 4
            # the prefix follows our HELLO: from now on the caller watches its program
            assert messages_until(chan, (STDIN, b"p"))[-1] == (STDIN, b"p")
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                with open(fifo, "w") as go:
                    go.write("\n")
                wait_for(lambda: process_state(program) == "Z", DATA_TIMEOUT, "program exit")
                chan.sendall(msg(STDOUT) + msg(STDERR) + msg(EXIT, STATUS_0))
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            sent = split_messages(read_until_eof(chan))
        assert proc.wait(DATA_TIMEOUT) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sent.count((STDIN, b"")) <= 1, sent
    assert EXIT not in [t for t, _ in sent]
