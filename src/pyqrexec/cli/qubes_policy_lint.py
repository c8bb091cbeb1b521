"""qubes-policy-lint: check policy files line by line (docs/reference/cli.md#qubes-policy-lint).

Includes are not followed; each line is parsed on its own (`-i`: as a legacy line, the content of
an `!include-service * *` file). Every file is checked, even after one with errors.
"""

from __future__ import annotations

import argparse
import sys

from ..policy.lint import lint
from . import entry

__all__ = ["main", "run"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qubes-policy-lint")
    parser.add_argument(
        "-s", "--show-line", action="store_true", help="append the offending line to each error"
    )
    parser.add_argument(
        "-i",
        "--include-service",
        action="store_true",
        help="read the files in the legacy syntax of !include-service files",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="policy file, - for stdin")
    return parser


def _read(path: str) -> bytes | str:
    """The file's content, or the error line to print."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return f"{path}:0: error: File does not exist."
    except OSError as err:
        return f"{path}:0: error: cannot read file: {err.strerror}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    failed = False
    for path in args.files:
        data = _read(path)
        if isinstance(data, str):
            errors = [data]
        else:
            errors = lint(path, data, args.include_service, args.show_line)
        if errors:
            failed = True
            sys.stdout.write("".join(line + "\n" for line in errors))
            sys.stdout.flush()
    return 1 if failed else 0


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
