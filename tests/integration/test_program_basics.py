"""Every installed program: `--version`, and `--help` ending with its exit-status table."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest

from pyqrexec import __version__

from .fixtures.processes import PYTHON, SRC

_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
#: upstream's own status for --help where it is not 0
HELP_STATUS = {"qrexec-daemon": 1, "qrexec-agent": 2}
_CONFIG = tomllib.loads(_PYPROJECT.read_text())


def _scripts() -> dict[str, str]:
    """Every installed program: entry points, and the plain launchers of script-files."""
    scripts = dict(_CONFIG["project"]["scripts"])
    for rel in _CONFIG["tool"]["setuptools"]["script-files"]:
        path = _PYPROJECT.parent / rel
        module = re.search(r"^from (pyqrexec\.cli\.\w+) import run$", path.read_text(), re.M)
        assert module is not None, f"{rel} runs no pyqrexec program"
        scripts[path.name] = f"{module.group(1)}:run"
    return scripts


SCRIPTS = _scripts()


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([PYTHON, "-m", module, *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # a program that took --help for something else
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_version_and_help(name: str) -> None:
    module = SCRIPTS[name].split(":")[0]
    shown = "qrexec-policy-exec" if name == "qrexec-policy" else name
    r = _run(module, "--version")
    assert (r.returncode, r.stdout) == (0, f"{shown} (pyqrexec) {__version__}\n"), r.stderr
    r = _run(module, "--help")
    assert r.returncode == HELP_STATUS.get(name, 0), r.stderr
    text = r.stdout + r.stderr
    table = text.split("exit status:\n", 1)[1]
    assert re.search(r"^\s+130\s+interrupted \(Ctrl-C\)$", table, re.M), text
    assert "Traceback" not in text
