"""`qrexec-host reload`: the config file applied to the running host (docs/qrexec-host.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..host.paths import Paths
    from .qrexec_host import QCall

__all__ = ["reload_command"]


def reload_command(args: argparse.Namespace, state: Path, paths: Paths, qcall: QCall) -> int:
    """`pyqrexec.host.Reload`: the manager reads the file `up` read, again. Refused as a
    whole (exit 1, nothing changed) when the file is wrong or would change what a running
    domain was started with; exit 1 too when the policy does not load."""
    from ..qubesd.client import QubesdError

    try:
        answer = json.loads(qcall("pyqrexec.host.Reload"))
    except QubesdError as err:
        if err.exc_type != "QubesException":
            raise
        lines = err.message.splitlines() or [""]
        print(f"qrexec-host: reload: {lines[0]}", file=sys.stderr)
        for line in lines[1:]:
            print(f"  {line}", file=sys.stderr)
        return 1
    said = False
    for key in ("added", "removed", "started"):
        if answer.get(key):
            print(f"{key}: {' '.join(answer[key])}")
            said = True
    for name, keys in answer.get("changed", {}).items():
        print(f"changed: {name} ({', '.join(keys)})")
        said = True
    if not said:
        print("no change")
    if answer.get("policy_error"):
        print(f"qrexec-host: reload: policy failed to load: {answer['policy_error']}",
              file=sys.stderr)
        return 1
    return 0
