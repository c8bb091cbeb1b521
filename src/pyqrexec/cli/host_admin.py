"""`qrexec-host reload`: the config file applied to the running host (docs/qrexec-host.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Protocol

from ..host.paths import Paths
from ..qubesd.client import QubesdError

__all__ = ["QCall", "reload_command"]


class QCall(Protocol):
    """One qubesd request from a client command; errors in `ok` answer b""."""

    def __call__(self, method: str, dest: str = "dom0", ok: tuple[str, ...] = (),
                 arg: str = "", payload: bytes = b"") -> bytes: ...


def reload_command(args: argparse.Namespace, state: Path, paths: Paths, qcall: QCall) -> int:
    """`pyqrexec.host.Reload`: the manager reads the file `up` read, again. Refused as a
    whole (exit 1, nothing changed) when the file is wrong or would change what a running
    domain was started with; exit 1 too when the policy does not load."""
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
