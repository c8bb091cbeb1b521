"""qubes-policy-editor: edit a policy file safely through the policy Admin API
(docs/reference/cli.md#qubes-policy-editor).

The file is fetched, edited in a temporary copy, linted until it passes (or the user gives up)
and written back with the token it was fetched with, so a concurrent change is not overwritten.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

from ..client import policy_admin as api
from ..client.policy_admin import invalid_name_chars
from ..policy.lint import lint
from ..system.environment import Environment
from . import entry

__all__ = ["main", "run"]

_INCLUDE = "include/"
_SUFFIX = ".policy"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qubes-policy-editor")
    parser.add_argument(
        "file",
        nargs="?",
        default="30-user",
        metavar="[include/]FILE",
        help="the file to edit, without .policy (default 30-user); include/FILE for a file of "
        "include/. The editor is $VISUAL, else $EDITOR, else vi",
    )
    return parser


class _Quit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _edit(path: str) -> None:
    # through the shell, so that VISUAL / EDITOR may carry options
    command = "${VISUAL:-${EDITOR:-vi}} -- " + shlex.quote(path)
    try:
        subprocess.run(command, shell=True, check=True)
    except (subprocess.CalledProcessError, OSError) as err:
        print(f"Failed to open editor: {err}", file=sys.stderr)
        raise _Quit(1) from err


def _ask() -> str:
    """`e` or `q` from the user."""
    while True:
        sys.stderr.write("What now? ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:  # no one to answer: leave without saving, but not as a success
            sys.stderr.write("\n")
            raise _Quit(1)
        if line.strip() in ("e", "q"):
            return line.strip()


def _edit_until_clean(path: str, include: bool) -> None:
    while True:
        _edit(path)
        with open(path, "rb") as f:
            errors = lint(path, f.read(), legacy=include, show_line=False)
        if not errors:
            return
        sys.stdout.write("".join(f"{line}\n" for line in errors))
        sys.stdout.flush()
        print(
            "Linting failed, do you want to:\n  (e)dit again\n  (q)uit without saving changes?",
            file=sys.stderr,
        )
        if _ask() == "q":
            raise _Quit(0)


def _manage(name: str, include: bool) -> None:
    env = Environment.current()
    try:
        content, token = api.get(env, name, include)
    except api.AdminError as err:
        if err.kind != api.NOT_FOUND:
            print(f"Failed to get policy {name!r}: {err.message}", file=sys.stderr)
            raise _Quit(1) from err
        content, token = b"", "new"
    except api.CallFailed as err:
        print(f"Failed to get policy {name!r}: {err}", file=sys.stderr)
        raise _Quit(1) from err
    suffix = f"_include_{name}" if include else f"_{name}{_SUFFIX}"
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    _edit_until_clean(path, include)
    with open(path, "rb") as f:
        edited = f.read()
    try:
        api.replace(env, name, edited, token, include)
    except (api.AdminError, api.CallFailed) as err:
        message = err.message if isinstance(err, api.AdminError) else str(err)
        print(
            f"Failed to replace policy {name!r} with file {path!r}: {message}", file=sys.stderr
        )
        raise _Quit(1) from err
    os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    name: str = args.file
    include = name.startswith(_INCLUDE)
    if include:
        name = name[len(_INCLUDE) :]
    bad = invalid_name_chars(name)
    if bad:
        # on stdout, as upstream Qubes prints it
        print(f"invalid character(s) in the file name: {bad!r}")
        return 1
    name = name.removesuffix(_SUFFIX)
    try:
        _manage(name, include)
    except _Quit as stop:
        return stop.status
    return 0


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
