"""services.launch.find_program answers as shutil.which does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pyqrexec.services.launch import find_program


@pytest.mark.parametrize("name", ["sh", "logger", "setpriv", "no-such-program-here", "/bin/sh",
                                  "/etc/passwd", "/tmp", "bin/sh"])
def test_same_answer_as_shutil(name: str) -> None:
    assert find_program(name) == shutil.which(name)


def test_searches_path_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        d.mkdir()
        (d / "prog").write_text("#!/bin/sh\n")
    (second / "prog").chmod(0o755)  # the first is not executable: skipped
    (first / "dir").mkdir()
    monkeypatch.setenv("PATH", f"{first}:{second}")
    assert find_program("prog") == str(second / "prog") == shutil.which("prog")
    assert find_program("dir") is None
