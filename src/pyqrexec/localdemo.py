"""The README's main job until the full host manager exists: one domain on this machine.

Starts `qrexec-agent` and `qrexec-daemon` for a domain `work` in a temporary directory,
runs a command in it through `qrexec-client`, prints its output, and shuts everything down.
"""

from __future__ import annotations

import subprocess
import sys

from .host.plain import PlainHost


def main() -> int:
    with PlainHost() as host:
        host.add("work", 1).start()
        cmd = "root:echo \"hello from domain work, running as $(id -un)\""
        print(f"$ qrexec-client -d work {cmd!r}", flush=True)
        r = subprocess.run(host.client_argv("-d", "work", cmd), env=host.env(0))
        print(f"(exit status {r.returncode})")
        return r.returncode


if __name__ == "__main__":
    sys.exit(main())
