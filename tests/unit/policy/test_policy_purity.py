"""`pyqrexec.policy` is pure: no sockets, processes, event loop or environment (loaders.py
alone touches files)."""

from __future__ import annotations

import ast
from pathlib import Path

import pyqrexec.policy

FORBIDDEN = {"socket", "asyncio", "subprocess", "select", "selectors", "signal", "threading"}


def test_no_io_imports() -> None:
    for path in Path(pyqrexec.policy.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                assert root not in FORBIDDEN, f"{path.name} imports {name}"
                assert root != "os" or path.name == "loaders.py", f"{path.name} imports os"
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("environ", "getenv"), f"{path.name} reads the environment"
