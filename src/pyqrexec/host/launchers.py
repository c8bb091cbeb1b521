"""Launchers that start a pyqrexec program with the Python running qrexec-host.

A Qubes system has its qrexec programs at fixed paths: dom0's services in its service
directories, `/usr/bin/qrexec-client-vm` in every qube. On this host the programs are
modules of this Python, so qrexec-host writes small launchers where those programs are
expected. Each puts the pyqrexec sources on the module path and exports them in PYTHONPATH,
because a launcher may run where the host's environment does not reach (a service's
environment, a sandbox).

A launcher is a Python script run by this Python with `-P`, started the way the installed
per-call launchers start (scripts/): no shell before it and no `runpy` (`-m`), about 3 ms
of every in-domain `qrexec-client-vm` call. Where this Python's path cannot stand in a `#!`
line (blanks, or too long for the kernel), it is a `#!/bin/sh` script running `-m`.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from ..compiled import STARTS
from ..system.programs import program
from .sandbox import source_dir

__all__ = ["DOMAIN_PROGRAMS", "program", "launcher_text", "write_launcher", "write_program",
           "domain_programs"]

#: the programs a qube's users and services call by name (upstream's /usr/bin in a VM)
DOMAIN_PROGRAMS = ("qrexec-client-vm", "qubes-policy", "qubes-policy-editor",
                   "qubes-policy-lint")


#: the programs that make one call and exit: they hold the garbage collector while they
#: start (pyqrexec.cli.start_up_over), as their installed launchers do (scripts/)
_PER_CALL = frozenset({"qrexec-client", "qrexec-client-vm"})
#: what the kernel reads of a `#!` line (BINPRM_BUF_SIZE), with room for ` -P`
_SHEBANG_MAX = 250


def launcher_text(name: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    """A script running program `name` with `args`, then its own arguments, `env` exported."""
    python = sys.executable
    if len(python) > _SHEBANG_MAX or not python.isprintable() or any(c.isspace()
                                                                    for c in python):
        return _shell_launcher(name, *args, env=env)
    module = f"pyqrexec.cli.{name.replace('-', '_')}"
    lines = [f"#!{python} -P",
             f"# {name}: pyqrexec's program, written by qrexec-host"]
    if name in _PER_CALL:
        lines += ["import gc", "gc.disable()"]
    lines += ["import os",
              "import sys",
              f"sources = {source_dir()!r}",
              "sys.path.insert(0, sources)",
              'old = os.environ.get("PYTHONPATH")',
              'os.environ["PYTHONPATH"] = f"{sources}:{old}" if old else sources']
    lines += [f"os.environ[{k!r}] = {v!r}" for k, v in sorted((env or {}).items())]
    if args:
        lines.append(f"sys.argv[1:1] = {list(args)!r}")
    lines += ["from pyqrexec.compiled import install",
              f"install({module!r})" if module in STARTS else "install()",
              f"from {module} import run",
              "run()"]
    return "\n".join(lines) + "\n"


def _shell_launcher(name: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    lines = ["#!/bin/sh",
             f"PYTHONPATH={shlex.quote(source_dir())}${{PYTHONPATH:+:$PYTHONPATH}}",
             "export PYTHONPATH"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted((env or {}).items())]
    words = " ".join(shlex.quote(w) for w in (*program(name), *args))
    lines.append(f'exec {words} "$@"')
    return "\n".join(lines) + "\n"


def write_launcher(path: Path, name: str, *args: str,
                   env: Mapping[str, str] | None = None) -> None:
    write_program(path, launcher_text(name, *args, env=env))


def write_program(path: Path, text: str) -> None:
    """An executable script `text` at `path` (readable by the users domains run as)."""
    path.write_text(text)
    os.chmod(path, 0o755)


def domain_programs(agent_socket: str) -> dict[str, str]:
    """Launcher texts of `DOMAIN_PROGRAMS` for a qube whose agent listens on `agent_socket`
    (the policy tools find qrexec-client-vm by name, so they need no socket of their own)."""
    texts = {name: launcher_text(name) for name in DOMAIN_PROGRAMS}
    texts["qrexec-client-vm"] = launcher_text("qrexec-client-vm",
                                              f"--agent-socket={agent_socket}")
    return texts
