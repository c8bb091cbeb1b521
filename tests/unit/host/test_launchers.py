"""qrexec-host's launchers (`host/launchers.py`): a Python script run by this Python with
`-P`, which puts the sources first on the module path, exports them and the settings, and
starts the program as the installed launchers do; a shell script where the interpreter's
path cannot stand in a `#!` line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyqrexec.host import launchers
from pyqrexec.host.launchers import launcher_text, write_program
from pyqrexec.host.sandbox import source_dir


def test_python_launcher_sets_up_and_starts_the_program(tmp_path: Path) -> None:
    text = launcher_text("qrexec-client-vm", "--agent-socket=/run/x", env={"QREXEC_X": "a b'c"})
    assert text.startswith(f"#!{sys.executable} -P\n")
    # everything but the start itself, which is replaced by a report of what it would get
    head, last = text.rstrip("\n").rsplit("\n", 1)
    assert last == "run()"
    probe = head + "\nprint(repr((os.environ['PYTHONPATH'], os.environ['QREXEC_X'], sys.argv[1:]," \
        " sys.flags.safe_path, sys.path[0], run.__module__)))\n"
    script = tmp_path / "qrexec-client-vm"
    write_program(script, probe)
    env = {**os.environ, "PYTHONPATH": "/elsewhere"}
    r = subprocess.run([str(script), "vm2", "test.Svc"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, check=True)
    assert eval(r.stdout) == (f"{source_dir()}:/elsewhere", "a b'c",
                              ["--agent-socket=/run/x", "vm2", "test.Svc"], True, source_dir(),
                              "pyqrexec.cli.qrexec_client_vm")


def test_the_program_runs(tmp_path: Path) -> None:
    script = tmp_path / "qrexec-client-vm"
    write_program(script, launcher_text("qrexec-client-vm",
                                        f"--agent-socket={tmp_path / 'none'}"))
    r = subprocess.run([str(script), "vm2", "test.Svc"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1
    assert r.stderr.startswith("qrexec-client-vm: cannot talk to the agent"), r.stderr


@pytest.mark.parametrize("python", ["/opt/my python/bin/python3", "/x" * 200])
def test_shell_launcher_where_the_path_cannot_stand_in_a_shebang(
        monkeypatch: pytest.MonkeyPatch, python: str) -> None:
    monkeypatch.setattr(launchers.sys, "executable", python)
    text = launcher_text("qubes-policy-lint", env={"QREXEC_X": "1"})
    assert text.startswith("#!/bin/sh\n")
    assert "export QREXEC_X=1\n" in text
    assert "-m pyqrexec.cli.qubes_policy_lint" in text
