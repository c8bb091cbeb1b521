"""qubes-rpc-multiplexer run as a program (docs/reference/services.md#qubes-rpc-multiplexer)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyqrexec.cli.qubes_rpc_multiplexer import main

SRC = str(Path(__file__).resolve().parents[2] / "src")
HANDLER = """#!/bin/sh
echo "$# $1|$QREXEC_SERVICE_FULL_NAME|${QREXEC_SERVICE_ARGUMENT-unset}|\
$QREXEC_REQUESTED_TARGET_TYPE|${QREXEC_REQUESTED_TARGET-unset}|$QREXEC_REMOTE_DOMAIN"
"""


def run(directory: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": SRC, "QREXEC_SERVICE_PATH": str(directory)}
    env["QREXEC_REQUESTED_TARGET"] = "stale"
    code = "from pyqrexec.cli.qubes_rpc_multiplexer import run; run()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, check=False
    )


@pytest.fixture
def handlers(tmp_path: Path) -> Path:
    for name in ("test.M", "test.M+special"):
        (tmp_path / name).write_text(HANDLER.replace("echo", f"echo {name}", 1))
        (tmp_path / name).chmod(0o755)
    (tmp_path / "test.M+empty").write_text("")
    return tmp_path


def test_bad_argument_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["a"]) == 1
    assert "bad argument count, usage:" in capsys.readouterr().err


def test_dispatch_and_environment(handlers: Path) -> None:
    result = run(handlers, "test.M+arg", "work", "name", "dom0")
    assert result.returncode == 0
    assert result.stdout == b"test.M 1 arg|test.M+arg|arg|name|dom0|work\n"
    special = run(handlers, "test.M+special", "work")
    assert special.stdout == b"test.M+special 1 special|test.M+special|special||unset|work\n"


def test_empty_file_is_skipped_and_no_plus(handlers: Path) -> None:
    assert run(handlers, "test.M+empty", "w").stdout.startswith(b"test.M 1 empty|")
    assert run(handlers, "test.M", "w").stdout == b"test.M 0 |test.M|unset||unset|w\n"


def test_missing_handler(handlers: Path) -> None:
    result = run(handlers, "test.Nothing", "work")
    assert result.returncode == 1
    assert b"failed to execute handler for test.Nothing" in result.stderr
