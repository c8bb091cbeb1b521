"""Man pages for every pyqrexec program, made from its own `--help` (roff, section 1).

    python3 -m pyqrexec.tools.manpages OUTDIR

The help is the one source of truth: each program's description, arguments and exit-status
table, as `--help` prints them, become NAME, SYNOPSIS and one section per help section.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

from .. import __version__
from ..cli.exit_status import EXIT_STATUS
from ..host.sandbox import source_dir

__all__ = ["PROGRAMS", "module_of", "help_text", "roff", "write_pages", "main"]


def _programs() -> tuple[str, ...]:
    return tuple(EXIT_STATUS)


#: every program with a console script (qrexec-policy is qrexec-policy-exec's other name)
PROGRAMS = _programs()
#: a help line `word:` alone opens a section (argparse's `options:`, our `exit status:`)
_SECTION = re.compile(r"([A-Za-z][A-Za-z ]*):\s*$")


def module_of(program: str) -> str:
    if program == "qrexec-policy-register-argument":
        return "pyqrexec.cli.policy_register_argument"
    return f"pyqrexec.cli.{program.replace('-', '_')}"


def help_text(program: str) -> str:
    """What `PROGRAM --help` prints, run with this Python (a narrow terminal, so that the
    page does not depend on who generates it)."""
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "80", "PYTHONPATH": source_dir(),
           "LC_ALL": "C.UTF-8"}
    r = subprocess.run([sys.executable, "-P", "-m", module_of(program), "--help"],
                       capture_output=True, text=True, env=env, timeout=60,
                       stdin=subprocess.DEVNULL)
    if not r.stdout.strip():
        raise RuntimeError(f"{program} --help printed nothing: {r.stderr.strip()}")
    return r.stdout


def _escape(line: str) -> str:
    line = line.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + line if line.startswith((".", "'")) else line


def _summary(program: str) -> str:
    doc = importlib.import_module(module_of(program)).__doc__ or ""
    first = doc.strip().splitlines()[0] if doc.strip() else program
    # "qrexec-host: the domain manager … (docs/…)." -> "the domain manager …"
    first = re.sub(r"\s*\([^)]*\)\.?$", "", first.split(": ", 1)[-1]).rstrip(".")
    return first


def roff(program: str, text: str, version: str) -> str:
    """The page: NAME from the module's summary, SYNOPSIS from the usage lines, the rest
    of the help as sections, each kept as printed (no filling: the help is laid out)."""
    lines = text.rstrip("\n").splitlines()
    usage: list[str] = []
    while lines and (lines[0].startswith("usage:") or (usage and lines[0].startswith(" "))):
        usage.append(lines.pop(0).removeprefix("usage: ").strip())
    out = [f'.TH "{program.upper()}" "1" "" "pyqrexec {version}" "pyqrexec"',
           ".SH NAME", f"{_escape(program)} \\- {_escape(_summary(program))}"]
    if usage:
        out += [".SH SYNOPSIS", ".nf", *map(_escape, usage), ".fi"]
    section = "DESCRIPTION"
    body: list[str] = []

    def flush() -> None:
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        if body:
            out.extend([f".SH {section}", ".nf", *(_escape(b) for b in body), ".fi"])
        body.clear()

    for line in lines:
        m = _SECTION.fullmatch(line)
        if m and not line.startswith(" "):
            flush()
            section = m.group(1).upper()
            continue
        body.append(line)
    flush()
    out += [".SH SEE ALSO", "The pyqrexec documentation: docs/ in its sources."]
    return "\n".join(out) + "\n"


def write_pages(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for program in PROGRAMS:
        page = out_dir / f"{program}.1"
        page.write_text(roff(program, help_text(program), __version__))
        written.append(page)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python3 -m pyqrexec.tools.manpages OUTDIR", file=sys.stderr)
        return 2
    for page in write_pages(Path(args[0])):
        print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
