"""qrexec-policy-agent-autostart: start the agent only in a GUI VM or dom0
(docs/reference/cli.md#qrexec-policy-agent)."""

from __future__ import annotations

import os
import sys

from . import entry
from .qrexec_policy_agent import main as agent_main

__all__ = ["main", "run", "MARKERS"]

MARKERS = ("/var/run/qubes-service/guivm", "/etc/qubes-release")


def main(argv: list[str] | None = None, markers: tuple[str, ...] = MARKERS) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not any(os.path.exists(path) for path in markers):
        print("Not in GuiVM or dom0. Exiting.")
        return 0
    return agent_main(args)


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
