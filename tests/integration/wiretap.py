"""A wiretap on one domain's vchans: every byte its processes exchange passes through the test.

The tapped domain's processes (agent, handlers, qrexec-client-vm) use their own
`VCHAN_SOCKET_DIR`. The tap mirrors each listener that appears in one directory into the
other one (`vchan.<domid>.*` out of the domain, `vchan.*.<domid>.*` into it), accepts the
peer there, connects to the real listener and copies both directions, recording them. The
vchan rule "the client retries until the server is there" makes the extra hop invisible.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import HEADER

from .calls import World
from .harness import parent_pid, peer_pid

if TYPE_CHECKING:
    from .harness import Domain, QrexecHost

HELLO, STDIN, STDOUT, STDERR, EXIT = (MsgType.HELLO, MsgType.DATA_STDIN, MsgType.DATA_STDOUT,
                                      MsgType.DATA_STDERR, MsgType.DATA_EXIT_CODE)
_NAME = re.compile(r"^vchan\.(\d+)\.(\d+)\.(\d+)\.sock$")


@dataclass(frozen=True)
class Message:
    type: int
    payload: bytes
    #: position of the message's last byte in the tap's global order of arrivals
    seq: int


@dataclass
class Direction:
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    eof: bool = False

    def data(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def messages(self) -> list[Message]:
        """The stream cut into qrexec messages (header type, len; then len bytes)."""
        out: list[Message] = []
        buf = b""
        for seq, chunk in self.chunks:
            buf += chunk
            while len(buf) >= 8:
                t, n = HEADER.unpack_from(buf)
                if len(buf) < 8 + n:
                    break
                out.append(Message(t, buf[8:8 + n], seq))
                buf = buf[8 + n:]
        return out


@dataclass
class Connection:
    name: str
    #: pid of the process that connected (the vchan client)
    client_pid: int
    #: pid of the process that listened (the vchan server)
    server_pid: int
    #: parent of the client process when it connected
    client_ppid: int
    to_server: Direction = field(default_factory=Direction)
    to_client: Direction = field(default_factory=Direction)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def server(self) -> int:
        return int(_NAME.match(self.name).group(1))  # type: ignore[union-attr]

    @property
    def client(self) -> int:
        return int(_NAME.match(self.name).group(2))  # type: ignore[union-attr]

    @property
    def port(self) -> int:
        return int(_NAME.match(self.name).group(3))  # type: ignore[union-attr]


def _connect_retrying(path: Path, timeout: float = 120.0) -> socket.socket | None:
    """Connect like a vchan client: the real server may not be listening (again) yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            time.sleep(0.005)
    return None


class Tap:
    def __init__(self, shared: Path, private: Path, domid: int, *, linger: bool = False) -> None:
        """`linger`: when one side stops reading, keep reading (and recording) what the other
        sends instead of failing its writes, as a peer that has not closed yet would."""
        self.linger = linger
        self.shared = shared
        self.private = private
        self.domid = domid
        private.mkdir(parents=True, exist_ok=True)
        os.chmod(private, 0o1777)
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._seq = 0
        #: (directory, name) -> inode of the real listener mirrored
        self._mirrored: dict[tuple[Path, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    # -- what the test reads -----------------------------------------------------------------
    def find(self, port: int, *, server: int | None = None, client: int | None = None,
             timeout: float = 20.0) -> Connection:
        """The (first) connection on `port`, waiting for it to end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for c in self.connections:
                    if c.port == port and server in (None, c.server) and client in (None, c.client):
                        break
                else:
                    c = None
            if c is not None:
                assert c.done.wait(max(deadline - time.monotonic(), 0.1)), f"{c.name} still open"
                return c
            time.sleep(0.01)
        raise AssertionError(f"no tapped connection on port {port}")

    def control(self) -> Connection:
        """The domain's control channel (vchan.<domid>.0.512), still open."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with self._lock:
                for c in self.connections:
                    if c.port == 512:
                        return c
            time.sleep(0.01)
        raise AssertionError("no control connection")

    def data_connections(self) -> list[Connection]:
        with self._lock:
            return [c for c in self.connections if c.port != 512]

    # -- machinery ---------------------------------------------------------------------------
    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for src, dst, pick in ((self.private, self.shared, 1), (self.shared, self.private, 2)):
                try:
                    names = os.listdir(src)
                except OSError:
                    continue
                seen = set()
                for name in names:
                    m = _NAME.match(name)
                    if m is None or int(m.group(pick)) != self.domid or m.group(1) == m.group(2):
                        continue
                    try:
                        inode = os.stat(src / name).st_ino
                    except OSError:
                        continue
                    seen.add((src, name))
                    if self._mirrored.get((src, name)) != inode:
                        self._mirrored[(src, name)] = inode
                        self._mirror(src, dst, name)
                for key in [k for k in self._mirrored if k[0] == src and k not in seen]:
                    del self._mirrored[key]
            time.sleep(0.002)

    def _mirror(self, src: Path, dst: Path, name: str) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        staging = dst / f".{name}.tap"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        listener.bind(str(staging))
        os.chmod(staging, 0o666)
        listener.listen(1)
        os.rename(staging, dst / name)
        threading.Thread(target=self._serve, args=(listener, src, dst, name), daemon=True).start()

    def _serve(self, listener: socket.socket, src: Path, dst: Path, name: str) -> None:
        listener.settimeout(120)
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst / name)
        upstream = _connect_retrying(src / name)
        if upstream is None:
            conn.close()
            return
        client = peer_pid(conn)
        record = Connection(name, client, peer_pid(upstream), parent_pid(client))
        with self._lock:
            self.connections.append(record)
        threads = [
            threading.Thread(target=self._pump, args=(conn, upstream, record.to_server),
                             daemon=True),
            threading.Thread(target=self._pump, args=(upstream, conn, record.to_client),
                             daemon=True),
        ]
        for t in threads:
            t.start()

        def finish() -> None:
            for t in threads:
                t.join()
            conn.close()
            upstream.close()
            record.done.set()

        threading.Thread(target=finish, daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, log: Direction) -> None:
        sending = True
        while True:
            try:
                chunk = src.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                log.eof = True
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            with self._lock:
                self._seq += 1
                log.chunks.append((self._seq, chunk))
            if not sending:
                continue
            try:
                dst.sendall(chunk)
            except OSError:
                if self.linger:
                    sending = False
                    continue
                # the reader is gone: the writer's next send fails, as with a closed vchan
                with contextlib.suppress(OSError):
                    src.shutdown(socket.SHUT_RD)
                log.eof = True
                return


def tapped_domain(world: World, name: str, domid: int, *, linger: bool = False,
                  agent_env: dict[str, str] | None = None, **kw: Any) -> tuple[Domain, Tap]:
    """A running domain of `world` whose every vchan goes through a new Tap."""
    host = world.host
    tap = Tap(host.vchan_dir, host.root / f"tap.{name}", domid, linger=linger)
    host.cleanups.append(tap.close)
    env = {"VCHAN_SOCKET_DIR": str(tap.private), **(agent_env or {})}
    return world.domain(name, domid, agent_env=env, **kw), tap


def tapped_world(host: QrexecHost, name: str = "work", domid: int = 5,
                 **kw: Any) -> tuple[World, Tap]:
    """A new World whose first domain (`work` unless told) is tapped."""
    world = World(host)
    return world, tapped_domain(world, name, domid, **kw)[1]
