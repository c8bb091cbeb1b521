"""services.launch.find_program answers as shutil.which does."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pyqrexec.services.launch import find_program


@pytest.mark.parametrize("name", ["sh", "logger", "setpriv", "no-such-program-here", "/bin/sh",
                                  "/etc/passwd", "/tmp", "bin/sh"])
def test_same_answer_as_shutil(name: str) -> None:
    path = os.environ.get("PATH", os.defpath)
    assert find_program(name, path) == shutil.which(name, path=path)


def test_searches_path_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        d.mkdir()
        (d / "prog").write_text("#!/bin/sh\n")
    (second / "prog").chmod(0o755)  # the first is not executable: skipped
    (first / "dir").mkdir()
    path = f"{first}:{second}"
    assert find_program("prog", path) == str(second / "prog") == shutil.which("prog", path=path)
    assert find_program("dir", path) is None
