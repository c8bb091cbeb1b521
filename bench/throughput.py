#!/usr/bin/env python3
"""Throughput of one call each way vs the socket floor, as root and unprivileged (issue 12,
goal 5: each direction >= 0.8 x the floor, for both).

  socket floor: head -c SIZE /dev/zero >socket, cat <socket >/dev/null   (no qrexec at all)
  to VM:        head -c SIZE /dev/zero | qrexec-client -d VM 'USER:cat > /dev/null'
  from VM:      qrexec-client -d VM 'USER:head -c SIZE /dev/zero' > /dev/null

The socket floor is the service's half of a call alone: a service's stdin and stdout are stream
sockets (docs/reference/services.md#arguments-and-environment), so `head` as a service writes
its 8 KiB chunks into a socket, which costs the kernel far more than a pipe. No relay can make a
call faster than that. A call's start and end (`USER:true`, measured in the same round) is
taken off each transfer: the root agent runs commands in root's login shell, whose profile may
take longer than the transfer itself. "root": the agent, the client and the floor's programs
run as root; "nobody": all of them run as `nobody` (setpriv), the dom0 daemon alone as root.
Usage: bench/throughput.py [SIZE_MIB [ROUNDS]]   (defaults 1024, 5)
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

from common import NOBODY, load, use_installed
from pyqrexec.transport.unixsock import stdio_pair
from world import BenchHost


def rate(seconds: float, size: int) -> float:
    return size / seconds / (1 << 20)


def run_once(cmd: str, env: dict[str, str], wrapper: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([*wrapper, "/bin/sh", "-c", cmd], env=env, check=True)
    return time.perf_counter() - t0


def socket_floor(size: int, wrapper: list[str]) -> float:
    """Seconds for `head` writing into a socket pair that `cat` reads."""
    ours, theirs = stdio_pair()
    t0 = time.perf_counter()
    head = subprocess.Popen([*wrapper, "head", "-c", str(size), "/dev/zero"], stdout=ours)
    cat = subprocess.Popen([*wrapper, "cat"], stdin=theirs, stdout=subprocess.DEVNULL)
    ours.close()
    theirs.close()
    head.wait()
    cat.wait()
    return time.perf_counter() - t0


def main() -> None:
    use_installed()
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    size = mib << 20
    with BenchHost() as host:
        host.vm("work", 1)
        host.vm("rootvm", 2, root=True)
        env = host.env(0)
        cases = {"root": ("rootvm", "root", []), "nobody": ("work", "nobody", NOBODY)}
        runs: dict[str, list[float]] = {}
        for _ in range(rounds):
            for key, (vm, user, wrapper) in cases.items():
                client = " ".join(shlex.quote(a) for a in host.client_argv("-d", vm))
                # the root agent runs commands in root's login shell, whose profile may print
                to_vm = f"head -c {size} /dev/zero | {client} '{user}:cat > /dev/null'"
                from_vm = f"{client} '{user}:head -c {size} /dev/zero' > /dev/null"
                runs.setdefault(f"{key} floor", []).append(socket_floor(size, wrapper))
                runs.setdefault(f"{key} call", []).append(
                    run_once(f"{client} '{user}:true'", env, wrapper))
                runs.setdefault(f"{key} to", []).append(run_once(to_vm, env, wrapper))
                runs.setdefault(f"{key} from", []).append(run_once(from_vm, env, wrapper))
    best = {k: min(v) for k, v in runs.items()}
    print(f"throughput of {mib} MiB through one call, best of {rounds} ({load()})")
    for key in cases:
        floor, call = best[f"{key} floor"], best[f"{key} call"]
        print(f"  {key:6} socket floor: {rate(floor, size):8.0f} MiB/s   (an empty call: "
              f"{call * 1e3:.0f} ms, taken off each transfer)")
        for way, label in (("to", "dom0 -> VM"), ("from", "VM -> dom0")):
            t = best[f"{key} {way}"] - call
            print(f"  {key:6} {label}:   {rate(t, size):8.0f} MiB/s   {floor / t:5.2f}x of the"
                  " floor (goal >= 0.8)")


if __name__ == "__main__":
    main()
