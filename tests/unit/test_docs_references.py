"""Comments and docstrings in `src/` and `tests/` point into the repository's own `docs/`, and
every such pointer (`docs/reference/protocol.md#data-ports`) names a file and a heading that
exist.

The same holds for the relative links between the pages of `docs/` and the READMEs.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
TESTS = ROOT / "tests"
DOCS = ROOT / "docs"

#: a reference document named without its place in docs/reference/ (`protocol.md §9`,
#: `../shared/spec/cli.md`): it points at nothing in the repository
BARE = re.compile(r"(?<!docs/reference/)\b(?:protocol|services|cli|policy|scenarios)\.md\b")
#: a pointer into docs/, with an optional heading anchor
POINTER = re.compile(r"\bdocs/[\w./-]*?\.md(?:#[\w-]+)?")
#: a relative Markdown link target: [text](path.md#anchor), [text](#anchor)
LINK = re.compile(r"\]\((?!https?:|mailto:)([^)\s]*)\)")


def sources() -> list[Path]:
    """The files of `src/` and `tests/` whose text a reader follows: code, scripts, Markdown.

    Not what an install or a run leaves there (`pyqrexec.egg-info` copies README.md, caches),
    nor this file, which spells the forms it refuses on purpose.
    """
    found = (p for top in (SRC, TESTS) for p in top.rglob("*")
             if p.is_file() and p.suffix in (".py", ".md", ""))
    return sorted(p for p in found if p != Path(__file__).resolve()
                  and not any(part.endswith(".egg-info") or part in ("__pycache__", ".hypothesis")
                              for part in p.parts))


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def pages() -> list[Path]:
    return sorted([*DOCS.rglob("*.md"), ROOT / "README.md", ROOT / "tests" / "README.md"])


def slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's rules) gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """The heading anchors of `page`; headings inside fenced code blocks do not count."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6} (.+)", line)
        if fenced or not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def broken(target: Path, anchor: str | None) -> str | None:
    """Why a pointer to `target` (and `anchor`) leads nowhere; None when it is fine."""
    if not target.is_file():
        return f"no file {os.path.relpath(target, ROOT)}"
    if anchor and anchor not in anchors(target):
        return f"no heading #{anchor} in {os.path.relpath(target, ROOT)}"
    return None


def lines(path: Path) -> list[tuple[int, str]]:
    return list(enumerate(path.read_text(encoding="utf-8").splitlines(), start=1))


def test_there_is_something_to_check() -> None:
    assert len(sources()) > 50
    assert ROOT / "tests" / "integration" / "fixtures" / "world.py" in sources()
    assert Path(__file__).resolve() not in sources()
    assert "data-ports" in anchors(DOCS / "reference" / "protocol.md")
    assert slug("`qubes.WaitForSession` and exec_params") == "qubeswaitforsession-and-exec_params"


@pytest.mark.parametrize("path", sources(), ids=name)
def test_no_section_signs(path: Path) -> None:
    """`§N` points into documents the repository does not hold."""
    bad = [f"{n}: {text.strip()}" for n, text in lines(path) if "§" in text]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sources(), ids=name)
def test_no_bare_reference_documents(path: Path) -> None:
    bad = [f"{n}: {text.strip()}" for n, text in lines(path) if BARE.search(text)]
    assert not bad, "name them as docs/reference/FILE.md#heading:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", sources(), ids=name)
def test_pointers_into_docs_exist(path: Path) -> None:
    bad = []
    for n, text in lines(path):
        for pointer in POINTER.findall(text):
            file, _, anchor = pointer.partition("#")
            why = broken(ROOT / file, anchor or None)
            if why:
                bad.append(f"{n}: {pointer}: {why}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", pages(), ids=name)
def test_links_between_pages_exist(page: Path) -> None:
    bad = []
    fenced = False
    for n, text in lines(page):
        if text.lstrip().startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        for target in LINK.findall(text):
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if path.is_dir():
                continue
            why = broken(path, anchor or None)
            if why:
                bad.append(f"{n}: {target}: {why}")
    assert not bad, "\n".join(bad)


def test_a_missing_heading_is_noticed(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Data ports\n\n```sh\n# not a heading\n```\n## Data ports\n")
    assert anchors(page) == {"title", "data-ports", "data-ports-1"}
    assert BARE.search("(protocol.md §9)") and BARE.search("../shared/spec/cli.md")
    assert not BARE.search("docs/reference/cli.md#qrexec-client")
    assert POINTER.findall("see docs/reference/policy.md#tokens.") == [
        "docs/reference/policy.md#tokens"
    ]
