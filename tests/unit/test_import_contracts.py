"""The package layers (docs/architecture.md#layers) are import-linter contracts that .ci/run
checks; these tests show that the contracts hold on the tree and break on a wrong-way import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")

pytestmark = pytest.mark.skipif(not Path(LINT_IMPORTS).exists(),
                                reason="import-linter is not installed (pip install -e '.[test]')")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--config", str(tree / "pyproject.toml")],
                          cwd=tree, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree / "src")},
                          capture_output=True, text=True, timeout=120)


def copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def plant(tree: Path, module: str, line: str) -> None:
    path = tree / "src" / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + "\n" + line + "\n")


def test_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    # the protocol core reaching up into a program
    ("pyqrexec.protocol.messages", "from ..cli import args  # noqa", "layers below them BROKEN"),
    # the relay importing the daemon that uses it
    ("pyqrexec.call.relay", "from ..daemon import worker  # noqa", "layers below them BROKEN"),
    # two sibling programs' packages must not lean on each other
    ("pyqrexec.agent.trigger", "from ..daemon import daemon  # noqa",
     "layers below them BROKEN"),
    # I/O in the sans-IO core
    ("pyqrexec.protocol.framing", "import socket  # noqa", "do no I/O BROKEN"),
    ("pyqrexec.policy.evaluation", "import os  # noqa", "the environment BROKEN"),
])
def test_a_wrong_way_import_breaks_a_contract(tmp_path: Path, module: str, line: str,
                                              contract: str) -> None:
    tree = copy_tree(tmp_path)
    plant(tree, module, line)
    result = lint_imports(tree)
    assert result.returncode != 0
    assert contract in result.stdout, result.stdout
