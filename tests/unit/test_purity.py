"""The sans-IO packages import no I/O module (style.md §4).

Each module is imported in a fresh interpreter, so modules pulled in by pytest or by other
tests cannot hide an import.
"""

from __future__ import annotations

import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = ("socket", "asyncio", "subprocess", "selectors")
SRC = Path(__file__).resolve().parents[2] / "src"
#: the only policy module that may do I/O
EXEMPT = {"pyqrexec.policy.loaders"}


def pure_modules() -> list[str]:
    names = []
    for package in ("pyqrexec.protocol", "pyqrexec.policy"):
        if not (SRC / package.replace(".", "/") / "__init__.py").exists():
            continue
        names.append(package)
        path = [str(SRC / package.replace(".", "/"))]
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(path)]
    return [n for n in names if n not in EXEMPT]


PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[2])
before = set(sys.modules)
module = importlib.import_module(sys.argv[1])
print(json.dumps([module.__file__, sorted(set(sys.modules) - before)]))
"""


def test_there_is_something_to_check() -> None:
    assert "pyqrexec.protocol.messages" in pure_modules()
    assert importlib.util.find_spec("pyqrexec") is not None


@pytest.mark.parametrize("module", pure_modules())
def test_module_imports_no_io(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, module, str(SRC)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path, loaded = json.loads(out)
    assert Path(path).is_relative_to(SRC), path
    bad = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert not bad, f"{module} imports {bad}"
