"""Shape rules a reviewer would otherwise have to remember (docs/architecture.md#code-shape):
no function above cyclomatic complexity 20 and no module above 500 lines unless it says why,
and start-up tricks only on the per-call clients' path."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.integration.test_client_imports import OURS

SRC = Path(__file__).resolve().parents[2] / "src" / "pyqrexec"
MAX_COMPLEXITY = 20
MAX_LINES = 500
#: the comment a function over the limit carries in its first lines, saying why
COMPLEXITY_NOTE = "# complexity"
#: the docstring phrase of a module over the limit, followed by the reason
SIZE_NOTE = "Size:"
#: the modules a qrexec-client or qrexec-client-vm call may import: the only ones whose
#: imports may wait inside functions without saying why (their list is that test's)
CLIENT_PATH = set().union(*OURS.values())
#: the comment on a function-local import elsewhere, followed by the reason
LAZY_NOTE = "# lazy:"


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def over_limit(path: Path) -> list[str]:
    radon_complexity = pytest.importorskip("radon.complexity")
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


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unexplained_local_imports(text: str) -> list[int]:
    """Lines of the imports inside functions that carry no `# lazy: reason`."""
    lines = text.splitlines()
    found = []
    for func in ast.walk(ast.parse(text)):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            statement = lines[node.lineno - 1: node.end_lineno]
            notes = [line.split(LAZY_NOTE, 1)[1].strip() for line in statement
                     if LAZY_NOTE in line]
            if not any(notes):
                found.append(node.lineno)
    return sorted(set(found))  # a nested function's import is seen from each enclosing one


def outside_client_path() -> list[Path]:
    paths = [path for path in sources() if module_name(path) not in CLIENT_PATH]
    assert len(paths) < len(sources()), "no module of the clients' list found"
    return paths


def test_function_local_imports_say_why() -> None:
    bad = [f"{path.relative_to(SRC)}:{line}: an import inside a function, without "
           f"'{LAZY_NOTE} reason'" for path in outside_client_path()
           for line in unexplained_local_imports(path.read_text())]
    assert not bad, "\n".join(bad)


def test_type_checking_comes_from_typing_outside_the_clients() -> None:
    bad = []
    for path in outside_client_path():
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.Assign) and any(
                    isinstance(target, ast.Name) and target.id == "TYPE_CHECKING"
                    for target in node.targets)):
                bad.append(f"{path.relative_to(SRC)}:{node.lineno}: TYPE_CHECKING assigned "
                           "(import it from typing)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("source", "lines"), [
    ("import os\n\ndef f():\n    import json\n", [4]),
    ("async def f():\n    from .x import (\n        a,\n    )\n", [2]),
    ("class C:\n    def m(self):\n        def inner():\n            import json\n", [4]),
    ("def f():\n    import json  # lazy: loads the codecs\n", []),
    ("def f():\n    from .x import (  # lazy: optional\n        a,\n    )\n", []),
    ("def f():\n    import json  # lazy:\n", [2]),  # a reason is required
    ("def f():\n    # lazy: on the line above does not count\n    import json\n", [3]),
    ("import json\n\nif json:\n    import os\n", []),  # module level, not a function
])
def test_unexplained_local_imports_are_found(source: str, lines: list[int]) -> None:
    assert unexplained_local_imports(source) == lines
