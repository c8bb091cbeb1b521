#!/usr/bin/env python3
"""Throughput of one call in each direction vs a plain pipe, measured in the same run.

  baseline:     head -c SIZE /dev/zero | cat > /dev/null
  socket floor: head -c SIZE /dev/zero >socket, cat <socket   (no qrexec at all)
  to VM:        head -c SIZE /dev/zero | qrexec-client -d work 'nobody:cat > /dev/null'
  from VM:      qrexec-client -d work 'nobody:head -c SIZE /dev/zero' > /dev/null

The socket floor is the service's half of a call alone: a service's stdin and stdout are stream
sockets (docs/reference/services.md#arguments-and-environment), so `head` as a service writes
its 8 KiB chunks into a socket, which costs the kernel far more than a pipe. No relay can make a
call faster than that.
The agent runs unprivileged (the host model's mode), so commands start with `/bin/sh -c`
rather than root's login shell and its profile scripts.
Usage: bench/throughput.py [SIZE_MIB]   (default 1024)
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

from common import compile_package, timed
from pyqrexec.host.plain import PlainHost
from pyqrexec.transport.unixsock import stdio_pair

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
RUNS = 5


def rate(seconds: float, size: int) -> float:
    return size / seconds / (1 << 20)


def best(cmd: str, env: dict[str, str] | None) -> float:
    return min(timed(cmd, 1, env=env) for _ in range(RUNS))


def socket_floor(size: int) -> float:
    """Seconds for `head` writing into a socket pair that `cat` reads."""
    runs = []
    for _ in range(RUNS):
        ours, theirs = stdio_pair()
        t0 = time.perf_counter()
        head = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=ours)
        cat = subprocess.Popen(["cat"], stdin=theirs, stdout=subprocess.DEVNULL)
        ours.close()
        theirs.close()
        head.wait()
        cat.wait()
        runs.append(time.perf_counter() - t0)
    return min(runs)


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    size = mib << 20
    compile_package()
    base = best(f"head -c {size} /dev/zero | cat > /dev/null", None)
    floor = socket_floor(size)
    with PlainHost() as host:
        host.add("work", 1, user="nobody").start(agent_wrapper=NOBODY)
        env = host.env(0)
        client = " ".join(shlex.quote(a) for a in host.client_argv("-d", "work"))
        to_vm = best(f"head -c {size} /dev/zero | {client} 'nobody:cat > /dev/null'", env)
        from_vm = best(f"{client} 'nobody:head -c {size} /dev/zero' > /dev/null", env)
    print(f"throughput of {mib} MiB (best of {RUNS})")
    print(f"  pipe baseline:  {rate(base, size):8.0f} MiB/s")
    print(f"  socket floor:   {rate(floor, size):8.0f} MiB/s   ratio {base / floor:5.2f}x"
          "   (no qrexec: head >socket, cat <socket)")
    print(f"  dom0 -> VM:     {rate(to_vm, size):8.0f} MiB/s   ratio {base / to_vm:5.2f}x")
    print(f"  VM -> dom0:     {rate(from_vm, size):8.0f} MiB/s   ratio {base / from_vm:5.2f}x"
          f"   ({floor / from_vm:4.2f}x of the socket floor)")


if __name__ == "__main__":
    main()
