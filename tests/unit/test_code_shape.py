"""Shape rules a reviewer would otherwise have to remember (docs/architecture.md#code-shape):
no function above cyclomatic complexity 20 and no module above 500 lines unless it says why."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

radon_complexity = pytest.importorskip("radon.complexity")

SRC = Path(__file__).resolve().parents[2] / "src" / "pyqrexec"
MAX_COMPLEXITY = 20
MAX_LINES = 500
#: the comment a function over the limit carries in its first lines, saying why
COMPLEXITY_NOTE = "# complexity"
#: the docstring phrase of a module over the limit, followed by the reason
SIZE_NOTE = "Size:"


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def over_limit(path: Path) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    bad = []
    for block in radon_complexity.cc_visit(text):
        if block.complexity <= MAX_COMPLEXITY:
            continue
        # the comment belongs on one of the first lines of the body (after the docstring)
        head = "\n".join(lines[block.lineno - 1: block.lineno + 12])
        if COMPLEXITY_NOTE not in head:
            bad.append(f"{path.relative_to(SRC)}:{block.lineno}: {block.fullname} "
                       f"has complexity {block.complexity} and no '{COMPLEXITY_NOTE}' comment")
    return bad


def test_functions_over_the_limit_say_why() -> None:
    bad = [line for path in sources() for line in over_limit(path)]
    assert not bad, "\n".join(bad)


def test_large_modules_say_why() -> None:
    bad = []
    for path in sources():
        text = path.read_text()
        if text.count("\n") <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if SIZE_NOTE not in doc:
            bad.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines and no "
                       f"'{SIZE_NOTE}' in its docstring")
    assert not bad, "\n".join(bad)
