#!/usr/bin/env python3
"""How long qrexec-host takes to start a domain: `qrexec-host start NAME` then `stop NAME`,
N times, on a host brought up for the purpose (bubblewrap when usable, else plain).

The domain's root has no usr/bin of its own, as a disposable's template usually has not.
A start runs until the domain's daemon answers, so it includes the sandbox, the agent's
start-up and the control-channel HELLO. Baselines measured in the same run: fork+exec of
/bin/true, and `python3 -c pass` (the agent and the daemon are Python programs).
Usage: bench/domain_start.py [N]   (default 20)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import compile_package, fork_exec_true, timed
from pyqrexec.system.programs import program

CONFIG = """\
[domains.dom0]

[domains.vm]
"""


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    compile_package()
    base = fork_exec_true(200)
    py = timed([sys.executable, "-c", "pass"], 20)
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)
        config = Path(top) / "host.toml"
        config.write_text(CONFIG)
        for name in ("dom0", "vm"):
            (Path(top) / name).mkdir()
        host = [*program("qrexec-host"), f"--config={config}", f"--state-dir={top}/state"]
        up = subprocess.run([*host, "up", "--detach"], capture_output=True, text=True)
        if up.returncode != 0:
            sys.exit(f"qrexec-host up failed: {up.stderr}")
        said = (Path(top) / "state/log/qrexec-host.log").read_text(errors="replace")
        mode = said.split("sandbox: ", 1)[-1].splitlines()[0] if "sandbox: " in said else "?"
        starts = []
        try:
            for _ in range(n + 1):  # the first start builds what later starts share
                t0 = time.perf_counter()
                subprocess.run([*host, "start", "vm"], check=True, capture_output=True)
                starts.append(time.perf_counter() - t0)
                subprocess.run([*host, "stop", "vm"], check=True, capture_output=True)
        finally:
            subprocess.run([*host, "down"], capture_output=True)
    first, rest = starts[0], starts[1:]
    median = statistics.median(rest)
    print(f"domain starts: {n} x `qrexec-host start vm` (+ stop), sandbox: {mode}")
    print(f"  first start:              {first * 1e3:8.1f} ms")
    print(f"  median of the others:     {median * 1e3:8.1f} ms")
    print(f"  fork+exec of true:        {base * 1e3:8.2f} ms   ratio {median / base:7.1f}x")
    print(f"  python3 -c pass:          {py * 1e3:8.2f} ms   ratio {median / py:7.1f}x")


if __name__ == "__main__":
    main()
