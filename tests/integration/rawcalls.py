"""Raw peers for the scenario tests: a recording policy daemon, a raw dom0 caller and a raw
VM caller that speak the wire protocol themselves (no qrexec program in between)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import HEADER, hello, pack_trigger4, parse_exec
from pyqrexec.transport import vchan

from .fake_agent import TIMEOUT, FakeAgent, RawClient, recv_exact
from .harness import Domain

#: seconds a raw peer waits for any one read on a data channel
DATA_TIMEOUT = 20.0


class PolicyRecorder:
    """A policy daemon on a Unix socket (QREXEC_POLICY_SOCKET) that records each request and
    answers `result=deny`; while `gate` is clear it holds every answer back."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.requests: list[bytes] = []
        self.gate = threading.Event()
        self.gate.set()
        self.arrived = threading.Condition()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1024)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TIMEOUT)
            data = b""
            try:
                while not data.endswith(b"\n\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                return
            with self.arrived:
                self.requests.append(data)
                self.arrived.notify_all()
            self.gate.wait(120)
            try:
                conn.sendall(b"result=deny\n")
            except OSError:
                pass

    def wait(self, count: int, timeout: float = 30) -> list[dict[str, str]]:
        """The first `count` requests, parsed into key -> value."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout), (
                f"{len(self.requests)} policy requests, expected {count}")
            return [parse_request(r) for r in self.requests[:count]]

    def close(self) -> None:
        self.gate.set()
        self.listener.close()


def parse_request(data: bytes) -> dict[str, str]:
    assert data.endswith(b"\n\n"), data
    lines = data[:-2].decode("ascii").split("\n")
    return dict(line.split("=", 1) for line in lines)


@dataclass
class RawResult:
    port: int
    #: the service side's messages after its HELLO: (type, payload)
    messages: list[tuple[int, bytes]]

    @property
    def exit_code(self) -> int | None:
        for t, p in self.messages:
            if t == MsgType.DATA_EXIT_CODE:
                return int(struct.unpack("<i", p)[0])
        return None

    def stream(self, msgtype: int) -> bytes:
        return b"".join(p for t, p in self.messages if t == msgtype)


def read_messages(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Messages until EXIT_CODE or EOF."""
    out: list[tuple[int, bytes]] = []
    while len(head := recv_or_eof(sock, 8)) == 8:
        t, n = HEADER.unpack(head)
        out.append((t, recv_exact(sock, n)))
        if t == MsgType.DATA_EXIT_CODE:
            break
    return out


def split_messages(data: bytes) -> list[tuple[int, bytes]]:
    """The whole messages in `data`, a channel's bytes as received."""
    out = []
    while len(data) >= 8:
        t, n = HEADER.unpack_from(data)
        out.append((t, data[8 : 8 + n]))
        data = data[8 + n :]
    return out


def recv_or_eof(sock: socket.socket, n: int) -> bytes:
    """`n` bytes, or fewer when the peer closes first."""
    data = b""
    while len(data) < n and (chunk := sock.recv(n - len(data))):
        data += chunk
    return data


def data_handshake(sock: socket.socket, version: int) -> int:
    """HELLO both ways on a data channel; the peer's version."""
    sock.sendall(hello(version))
    t, n = HEADER.unpack(recv_exact(sock, 8))
    assert (t, n) == (MsgType.HELLO, 4)
    return int(struct.unpack("<I", recv_exact(sock, 4))[0])


def raw_dom0_exec(dom: Domain, cmd: bytes, *, stdin: bytes = b"", version: int = 4,
                  peer: int = 0, msgtype: int = MsgType.EXEC_CMDLINE) -> RawResult:
    """dom0 runs `cmd` in `dom` like qrexec-client, byte by byte: request on the daemon socket,
    data channel served by the test."""
    client = RawClient(dom.host, dom.name)
    try:
        client.hello()
        client.request(msgtype, peer, 0, cmd + b"\0")
        t, domid, port = client.reply()
        assert (t, domid) == (msgtype, dom.domid)
        listener, path = vchan.listen(str(dom.host.vchan_dir), peer, dom.domid, port)
        with vchan.accept_one(listener, path, TIMEOUT) as chan:
            chan.settimeout(TIMEOUT)
            data_handshake(chan, version)
            if msgtype == MsgType.EXEC_CMDLINE:
                if stdin:
                    chan.sendall(HEADER.pack(MsgType.DATA_STDIN, len(stdin)) + stdin)
                chan.sendall(HEADER.pack(MsgType.DATA_STDIN, 0))
            return RawResult(port, read_messages(chan))
    finally:
        client.close()


def raw_vm_call(dom: Domain, target: bytes, service: bytes, *,
                vchan_dir: str | None = None, wait_in_backlog: bool = False) -> int | None:
    """What qrexec-client-vm does, in-process: trigger on `dom`'s agent socket, then the data
    channel with an empty stdin. None = refused, else the service's exit status.

    `wait_in_backlog`: connect as qrexec-client-vm does, blocking while the agent's listen
    backlog is full (with a timeout, a Unix connect fails at once with EAGAIN instead)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as agent:
        if wait_in_backlog:
            agent.connect(dom.agent_socket)
        agent.settimeout(TIMEOUT * 3)
        if not wait_in_backlog:
            agent.connect(dom.agent_socket)
        agent.sendall(pack_trigger4(service, target, b"SOCKET"))
        answer = recv_or_eof(agent, 8)
        if len(answer) < 8:
            return None
        domain, port = struct.unpack("<II", answer)
        listener, path = vchan.listen(vchan_dir or str(dom.host.vchan_dir), dom.domid, domain,
                                      port)
        with vchan.accept_one(listener, path, TIMEOUT) as chan:
            chan.settimeout(TIMEOUT)
            data_handshake(chan, 3)
            # a service that is quick to exit may have closed the channel already
            with contextlib.suppress(BrokenPipeError):
                chan.sendall(HEADER.pack(MsgType.DATA_STDIN, 0))
            return RawResult(port, read_messages(chan)).exit_code


def children(pid: int) -> list[int]:
    """Direct children of `pid` (all threads)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


@contextlib.contextmanager
def as_caller(dom: Domain, cmd: bytes) -> Iterator[socket.socket]:
    """dom0 asks `dom` to run `cmd`; the test is the caller end of the data channel."""
    client = RawClient(dom.host, dom.name)
    try:
        client.hello()
        client.request(MsgType.EXEC_CMDLINE, 0, 0, cmd + b"\0")
        _, _, port = client.reply()
        listener, path = vchan.listen(str(dom.host.vchan_dir), 0, dom.domid, port)
        with vchan.accept_one(listener, path, DATA_TIMEOUT) as chan:
            chan.settimeout(DATA_TIMEOUT)
            yield chan
    finally:
        client.close()


@contextlib.contextmanager
def as_dom0_caller(dom: Domain, agent: FakeAgent, service: bytes,
                   ident: bytes) -> Iterator[socket.socket]:
    """`dom`, a fake agent behind a real daemon, calls `service` in dom0; the test is the
    caller end of the data channel (the daemon's request worker serves the call)."""
    agent.send(pack_trigger4(service, b"dom0", ident))
    t, payload = agent.recv_message()
    assert t == MsgType.SERVICE_CONNECT
    params = parse_exec(payload)
    assert params.connect_domain == 0
    listener, path = vchan.listen(str(dom.host.vchan_dir), dom.domid, 0, params.connect_port)
    with vchan.accept_one(listener, path, DATA_TIMEOUT) as chan:
        chan.settimeout(DATA_TIMEOUT)
        yield chan


@contextlib.contextmanager
def as_target(agent: FakeAgent, own: int) -> Iterator[socket.socket]:
    """The fake agent of domain `own` takes the EXEC_CMDLINE it is sent; the test is that
    call's service side on the data channel it connects."""
    t, payload = agent.recv_message()
    assert t == MsgType.EXEC_CMDLINE
    params = parse_exec(payload)
    chan = vchan.connect(str(agent.path.parent), params.connect_domain, own,
                         params.connect_port, DATA_TIMEOUT)
    chan.settimeout(DATA_TIMEOUT)
    with chan:
        yield chan
