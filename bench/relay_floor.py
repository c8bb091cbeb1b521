#!/usr/bin/env python3
"""What any relay on this transport can reach for dom0 -> VM, measured in the same run.

A dom0 -> VM call moves bytes through four processes: the producer, qrexec-client, the
agent's handler and the service, joined by a pipe, the vchan (a Unix stream socket) and the
service's stdin (a stream socket, docs/reference/services.md#arguments-and-environment). This
script builds that chain with
the least possible relays, no framing and no call set-up, and times 1 GiB through it:

  baseline: head -c SIZE /dev/zero | cat > /dev/null
  copy:     head | relay (readv + send) | socket | relay (recv_into + send) | socket | cat
  splice:   the same with os.splice (pipe -> socket, socket -> pipe -> socket): no copies

Usage: bench/relay_floor.py [SIZE_MIB]   (default 1024)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from common import timed
from pyqrexec.transport.unixsock import stdio_pair

RUNS = 5
CHUNK = 256 << 10


def _copy_from_pipe(fd: int, out: socket.socket) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := os.readv(fd, [buf]):
        out.sendall(view[:n])


def _copy_from_socket(src: socket.socket, out: socket.socket) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := src.recv_into(buf):
        out.sendall(view[:n])


def _splice_from_pipe(fd: int, out: socket.socket) -> None:
    while os.splice(fd, out.fileno(), CHUNK):
        pass


def _splice_from_socket(src: socket.socket, out: socket.socket) -> None:
    r, w = os.pipe()
    while n := os.splice(src.fileno(), w, CHUNK):
        while n:
            n -= os.splice(r, out.fileno(), n)


def _in_child(body: Callable[..., None], *args: object) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            body(*args)
        finally:
            os._exit(0)
    return pid


def chain(size: int, splice: bool) -> float:
    """Seconds for `size` bytes through head | relay | vchan | relay | stdin socket | cat."""
    vchan_ours, vchan_peer = stdio_pair()
    stdin_ours, stdin_peer = stdio_pair()
    t0 = time.perf_counter()
    head = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    assert head.stdout is not None
    client = _in_child(_splice_from_pipe if splice else _copy_from_pipe,
                       head.stdout.fileno(), vchan_ours)
    head.stdout.close()
    vchan_ours.close()
    cat = subprocess.Popen(["cat"], stdin=stdin_peer, stdout=subprocess.DEVNULL)
    stdin_peer.close()
    handler = _in_child(_splice_from_socket if splice else _copy_from_socket,
                        vchan_peer, stdin_ours)
    vchan_peer.close()
    stdin_ours.close()
    for pid in (client, handler):
        os.waitpid(pid, 0)
    head.wait()
    cat.wait()
    return time.perf_counter() - t0


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    size = mib << 20
    base = min(timed(f"head -c {size} /dev/zero | cat > /dev/null", 1) for _ in range(RUNS))
    copy = min(chain(size, False) for _ in range(RUNS))
    splice = min(chain(size, True) for _ in range(RUNS))

    def rate(seconds: float) -> float:
        return size / seconds / (1 << 20)

    print(f"dom0 -> VM chain without qrexec, {mib} MiB (best of {RUNS})")
    print(f"  pipe baseline:   {rate(base):8.0f} MiB/s")
    print(f"  copy relays:     {rate(copy):8.0f} MiB/s   ratio {base / copy:5.2f}x")
    print(f"  splice relays:   {rate(splice):8.0f} MiB/s   ratio {base / splice:5.2f}x")


if __name__ == "__main__":
    main()
