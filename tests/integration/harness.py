"""Start real qrexec programs as processes in a temporary directory.

Programs run as `python -m pyqrexec.cli.<module>` with PYTHONPATH set to the source tree of
the imported package, so the tests work from a checkout as well as from an install.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyqrexec
from pyqrexec.system.parent_death import dies_with_this_process

SRC = str(Path(pyqrexec.__file__).resolve().parents[1])
PYTHON = sys.executable


def program(name: str) -> list[str]:
    """argv prefix that runs the program `name` (e.g. "qrexec-client")."""
    return [PYTHON, "-m", f"pyqrexec.cli.{name.replace('-', '_')}"]


def dies_with_tests() -> Callable[[], None] | None:
    """`preexec_fn` making a program die with the test run (SIGKILL): a run that ends
    without stopping what it started (a failed fixture, an interrupted session) must not
    leave agents and daemons behind. Only from the main thread: the signal fires when the
    starting thread ends, and a worker thread ends long before the test does."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return dies_with_this_process()


def _dying(wrapper: list[str]) -> list[str]:
    """A `setpriv` wrapper that keeps the parent-death signal its switch of user clears."""
    if wrapper[:1] == ["setpriv"] and not any(a.startswith("--pdeathsig") for a in wrapper):
        return ["setpriv", "--pdeathsig=KILL", *wrapper[1:]]
    return wrapper


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def process_gone(pid: int) -> bool:
    """The process has ended (a zombie nobody reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def parent_pid(pid: int) -> int:
    """The parent of `pid`; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of Unix socket `sock`."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


@dataclass
class Domain:
    host: QrexecHost
    name: str
    domid: int
    user: str = "root"
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    agent: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    agent_env: dict[str, str] = field(default_factory=dict)
    daemon_env: dict[str, str] = field(default_factory=dict)

    @property
    def agent_socket(self) -> str:
        return str(self.host.root / f"agent.{self.name}.sock")

    @property
    def agent_log(self) -> Path:
        return self.host.root / f"agent.{self.name}.log"

    @property
    def daemon_log(self) -> Path:
        return self.host.root / f"daemon.{self.name}.log"

    def start_agent(self, *, wrapper: list[str] | None = None, extra: list[str] | None = None,
                    env: dict[str, str] | None = None,
                    fork_server: str | None = None) -> subprocess.Popen[bytes]:
        """Start the agent; `fork_server` is its `-s` template (default: `-S`, none)."""
        e = self.host.env(self.domid, **self.agent_env, **(env or {}))
        fs = ["-S"] if fork_server is None else ["-s", fork_server]
        argv = [*_dying(wrapper or []), *program("qrexec-agent"), "-a", self.agent_socket,
                *fs, *(extra or [])]
        log = open(self.agent_log, "ab")  # noqa: SIM115 - handed to the child
        self.agent = subprocess.Popen(argv, env=e, stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL, preexec_fn=dies_with_tests())
        log.close()
        return self.agent

    def start_daemon(self, *, env: dict[str, str] | None = None, wait: bool = True,
                     extra: list[str] | None = None) -> subprocess.Popen[bytes]:
        e = self.host.env(0, **self.daemon_env, **(env or {}))
        argv = [*program("qrexec-daemon"), "--direct", f"--uuid={self.uuid}",
                f"--socket-dir={self.host.socket_dir}", *(extra or []),
                str(self.domid), self.name, self.user]
        log = open(self.daemon_log, "ab")  # noqa: SIM115
        self.daemon = subprocess.Popen(argv, env=e, stdout=log, stderr=log,
                                       stdin=subprocess.DEVNULL, preexec_fn=dies_with_tests())
        log.close()
        if wait:
            self.wait_daemon_ready()
        return self.daemon

    def wait_daemon_ready(self, timeout: float = 20.0) -> None:
        path = self.host.socket_dir / f"qrexec.{self.name}"
        d = self.daemon

        def ready() -> bool:
            if d is not None and d.poll() is not None:
                raise AssertionError(f"daemon exited {d.returncode}: {self.daemon_log.read_text()}")
            return path.exists()

        wait_for(ready, timeout, f"daemon socket {path}")

    def start(self) -> Domain:
        self.start_agent()
        self.start_daemon()
        return self

    def stop_agent(self) -> None:
        _stop(self.agent)
        self.agent = None

    def stop_daemon(self) -> None:
        _stop(self.daemon)
        self.daemon = None

    def stop(self) -> None:
        self.stop_daemon()
        self.stop_agent()


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class QrexecHost:
    """A temporary vchan directory and dom0 socket directory shared by domains."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.vchan_dir = root / "vchan"
        self.socket_dir = root / "qubes"
        self.vchan_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        for d in (root, self.vchan_dir, self.socket_dir):
            os.chmod(d, 0o777)
        self.domains: dict[str, Domain] = {}
        #: run at close, after the domains are stopped
        self.cleanups: list[Callable[[], object]] = []

    def env(self, domid: int, **extra: str) -> dict[str, str]:
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("QREXEC") or k.startswith("VCHAN"):
                del e[k]
        e.update(PYTHONPATH=SRC, VCHAN_SOCKET_DIR=str(self.vchan_dir), VCHAN_DOMAIN=str(domid))
        e.update(extra)
        return e

    def domain(self, name: str, domid: int, user: str = "root") -> Domain:
        dom = Domain(self, name, domid, user)
        self.domains[name] = dom
        return dom

    def client(self, *args: str, input: bytes | None = None, timeout: float = 60,
               env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[bytes]:  # type: ignore[no-untyped-def]
        """Run qrexec-client (dom0) to completion."""
        argv = [*program("qrexec-client"), f"--socket-dir={self.socket_dir}", *args]
        return subprocess.run(argv, input=input, capture_output=True, timeout=timeout,
                              env=self.env(0, **(env or {})), **kw)

    def close(self) -> None:
        for dom in self.domains.values():
            dom.stop()
        for cleanup in self.cleanups:
            cleanup()


def cleanup_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def run_on_stdin_socket(argv: list[str], env: dict[str, str], data: bytes) -> tuple[int, bytes]:
    """Run `argv` with a socket as fd 0 (`--use-stdin-socket`): send `data`, end it, and
    collect what comes back on the same socket. (exit status, received bytes)"""
    import socket

    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(argv, stdin=theirs.fileno(), env=env)
    theirs.close()
    with ours:
        ours.sendall(data)
        ours.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := ours.recv(65536):
            received += chunk
    return proc.wait(30), received
