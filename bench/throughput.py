#!/usr/bin/env python3
"""Throughput of one call in each direction vs a plain pipe, measured in the same run.

  baseline: head -c SIZE /dev/zero | cat > /dev/null
  to VM:    head -c SIZE /dev/zero | qrexec-client -d work 'root:cat > /dev/null'
  from VM:  qrexec-client -d work 'root:head -c SIZE /dev/zero' > /dev/null
Usage: bench/throughput.py [SIZE_MIB]   (default 1024)
"""

from __future__ import annotations

import shlex
import sys

from common import compile_package, timed
from pyqrexec.host.plain import PlainHost


def rate(seconds: float, size: int) -> float:
    return size / seconds / (1 << 20)


def best(cmd: str, env: dict[str, str] | None, runs: int = 3) -> float:
    return min(timed(cmd, 1, env=env) for _ in range(runs))


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    size = mib << 20
    compile_package()
    base = best(f"head -c {size} /dev/zero | cat > /dev/null", None)
    with PlainHost() as host:
        host.add("work", 1).start()
        env = host.env(0)
        client = " ".join(shlex.quote(a) for a in host.client_argv("-d", "work"))
        to_vm = best(f"head -c {size} /dev/zero | {client} 'root:cat > /dev/null'", env)
        from_vm = best(f"{client} 'root:head -c {size} /dev/zero' > /dev/null", env)
    print(f"throughput of {mib} MiB (best of 3)")
    print(f"  pipe baseline:  {rate(base, size):8.0f} MiB/s")
    print(f"  dom0 -> VM:     {rate(to_vm, size):8.0f} MiB/s   ratio {base / to_vm:5.2f}x")
    print(f"  VM -> dom0:     {rate(from_vm, size):8.0f} MiB/s   ratio {base / from_vm:5.2f}x")


if __name__ == "__main__":
    main()
