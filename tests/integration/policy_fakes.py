"""Fake dom0 peers for the policy programs: qubesd and qrexec-policy-agent on Unix sockets."""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyqrexec

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "policy-system-info.json"
SRC = str(Path(pyqrexec.__file__).resolve().parents[1])


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


class FakeServer(socketserver.ThreadingUnixStreamServer):
    """Reads a whole request (to EOF or `NUL`-ended header), answers `respond(request)`."""

    daemon_threads = True

    def __init__(self, path: str, respond: Callable[[bytes], bytes]) -> None:
        self.respond = respond
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__(path, _Handler)
        threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True).start()

    def wait(self, count: int) -> None:
        """Wait until `count` requests arrived (background sends are not ordered with answers)."""
        deadline = time.monotonic() + 30
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(socketserver.BaseRequestHandler):
    server: FakeServer

    def handle(self) -> None:
        data = _read_all(self.request)
        with self.server.lock:
            self.server.requests.append(data)
        reply = self.server.respond(data)
        self.request.sendall(reply)


class FakeQubesd(FakeServer):
    """Answers `internal.GetSystemInfo` with `system_info` (bytes, changeable) and records calls."""

    def __init__(self, path: str) -> None:
        self.system_info = FIXTURE.read_bytes()
        self.errors: dict[str, bytes] = {}
        super().__init__(path, self._respond)

    def _respond(self, data: bytes) -> bytes:
        method = data.split(b"+", 1)[0].decode()
        if method in self.errors:
            return self.errors[method]
        if method == "internal.GetSystemInfo":
            return b"0\0" + self.system_info
        if method == "admin.vm.CreateDisposable":
            return b"0\0uuid:dddddddd-dddd-dddd-dddd-dddddddddddd"
        return b"0\0"

    def methods(self) -> list[bytes]:
        with self.lock:
            return [r.split(b"\0", 1)[0] for r in self.requests]


class FakePolicyAgent(FakeServer):
    """policy.Ask / policy.Notify: `answer(json)` gives the Ask reply (it may block)."""

    def __init__(self, path: str) -> None:
        self.answer: Callable[[bytes], bytes] = lambda _: b"deny"
        super().__init__(path, self._respond)

    def _respond(self, data: bytes) -> bytes:
        header, _, payload = data.partition(b"\0")
        if header.startswith(b"policy.Ask "):
            return self.answer(payload)
        return b""

    def received(self, service: bytes) -> list[tuple[bytes, bytes]]:
        with self.lock:
            found = [r.partition(b"\0") for r in self.requests]
        return [(h, p) for h, _, p in found if h.startswith(service + b" ")]


def env(tmp: Path, qubesd: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = SRC + os.pathsep + out.get("PYTHONPATH", "")
    out["QUBESD_INTERNAL_SOCKET"] = qubesd
    out["QUBESD_SOCKET"] = qubesd
    out["QREXEC_LEGACY_POLICY_DIR"] = str(tmp / "legacy")
    out["QREXEC_SERVICE_PATH"] = str(tmp / "rpc")
    out["QREXEC_LOG_DIR"] = str(tmp / "log")
    out["QREXEC_GRANTS_FILE"] = str(tmp / "grants.json")
    return out


def wait_for_socket(path: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until `proc` created `path` (fails if it exits first)."""
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        time.sleep(0.01)


def query(path: str, data: bytes) -> bytes:
    """Send one request, close the write side, read the answer to EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return _read_all(sock)


def program(module: str) -> list[str]:
    return [sys.executable, "-m", f"pyqrexec.cli.{module}"]


@dataclass
class DaemonSetup:
    tmp: Path
    etc: Path  # the persistent policy directory
    run: Path  # the runtime policy directory
    legacy: Path
    qubesd: FakeQubesd
    agent: FakePolicyAgent
    env: dict[str, str]
    socket: str = ""
    eval_socket: str = ""
    gui_socket: str = ""
    proc: subprocess.Popen[bytes] | None = None
    #: where the daemon's stderr goes (None: a pipe, read when it stops)
    log_file: Path | None = None

    def write(self, name: str, text: str, directory: Path | None = None) -> Path:
        path = (directory or self.etc) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def start(self, *extra: str) -> None:
        self.socket = str(self.tmp / "policy.sock")
        self.eval_socket = str(self.tmp / "rpc" / "policy.EvalSimple")
        self.gui_socket = str(self.tmp / "rpc" / "policy.EvalGUI")
        args = program("qrexec_policy_daemon") + [
            f"--policy-path={self.run}",
            f"--policy-path={self.etc}",
            f"--socket-path={self.socket}",
            f"--eval-socket-path={self.eval_socket}",
            f"--gui-socket-path={self.gui_socket}",
            *extra,
        ]
        if self.log_file is not None:  # many requests: more log than a pipe holds
            with open(self.log_file, "ab") as log:
                self.proc = subprocess.Popen(args, env=self.env, stderr=log)
        else:
            self.proc = subprocess.Popen(args, env=self.env, stderr=subprocess.PIPE)
        for path in (self.socket, self.eval_socket, self.gui_socket):
            wait_for_socket(path, self.proc)

    def stop(self) -> str:
        """Stop the daemon and return what it logged."""
        assert self.proc is not None
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        self.proc = None
        if self.log_file is not None:
            return self.log_file.read_text()
        return err.decode()
