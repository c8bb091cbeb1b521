"""Shared helpers of the benchmark scripts (not a test: they print figures and ratios)."""

from __future__ import annotations

import compileall
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def compile_package() -> None:
    """Start-up is measured with bytecode compiled, as a normal install has it."""
    import pyqrexec

    compileall.compile_dir(str(Path(pyqrexec.__file__).parent), quiet=1)


def timed(argv: list[str] | str, n: int, **kw: object) -> float:
    """Seconds per run of `argv`, run `n` times sequentially."""
    shell = isinstance(argv, str)
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(argv, shell=shell, check=True, **kw)  # type: ignore[call-overload]
    return (time.perf_counter() - t0) / n


def fork_exec_true(n: int) -> float:
    """Seconds per fork+exec+wait of /bin/true (posix_spawn, no shell)."""
    t0 = time.perf_counter()
    for _ in range(n):
        pid = os.posix_spawn("/bin/true", ["true"], os.environ)
        os.waitpid(pid, 0)
    return (time.perf_counter() - t0) / n


def serve_in_threads(srv: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Accept on listening `srv` in a background thread; each connection is handled in its
    own thread (a stand-in server of a benchmark)."""

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def serve_unix(path: str, answer: bytes, complete: Callable[[bytes], bool]) -> None:
    """A stand-in server on `path`, in threads: each connection gets `answer` once what it
    sent is `complete` (or at its EOF)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(512)

    def handle(conn: socket.socket) -> None:
        with conn:
            data = b""
            while not complete(data) and (chunk := conn.recv(4096)):
                data += chunk
            conn.sendall(answer)

    serve_in_threads(srv, handle)
