"""How one pyqrexec program starts another: with the Python running this one.

Our programs are modules of this Python, whether installed with console scripts or run
from a source tree, so a program that starts a sibling (qrexec-host its daemons, the
policy tools the Admin API service) builds the argv here rather than trusting PATH."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["program", "program_argv"]


def program(name: str) -> list[str]:
    """argv prefix running pyqrexec program `name` with this Python.

    `-P`: the working directory is not put on the module path. A domain's users run these
    programs from directories anybody in the domain may write (/tmp, a shared home), where
    a planted `pyqrexec` package would otherwise be imported instead of ours."""
    return [sys.executable, "-P", "-m", f"pyqrexec.cli.{name.replace('-', '_')}"]


def program_argv(name: str) -> list[str]:
    """How to start program `name`: the installed script beside this Python, else -m."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return program(name)
