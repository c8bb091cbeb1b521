"""Argument helpers shared by the C-style client programs (kept import-light).

`getopt` is the standard library's option parser, reimplemented here because importing the
standard one loads gettext and the regular-expression engine, a third of a client's
import time on a plain Python.
"""

from __future__ import annotations

import os

__all__ = ["UsageError", "GetoptError", "getopt", "NOT_A_NUMBER", "TRAILING_JUNK",
           "c_number", "once"]

NOT_A_NUMBER = "does not start with an ASCII digit"
TRAILING_JUNK = "trailing junk"


class UsageError(Exception):
    """Bad command line: print the message on stderr and exit with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def c_number(text: str) -> int:
    """C `strtol`/`strtoul` with base 0 (`0x` hex, leading-0 octal) as upstream checks it:
    the text must start with a digit and contain nothing after the number. ValueError's
    message is `NOT_A_NUMBER` or `TRAILING_JUNK`."""
    if not text[:1].isdigit():
        raise ValueError(NOT_A_NUMBER)
    t = text.lower()
    base = 16 if t.startswith("0x") else 8 if t.startswith("0") and len(t) > 1 else 10
    try:
        return int(t, base)
    except ValueError as err:
        raise ValueError(TRAILING_JUNK) from err


def once(already: object, option: str) -> None:
    """Options that may be given once: a second one is a usage error (exit 2)."""
    if already:
        raise UsageError(2, f"{option} given twice")


class GetoptError(Exception):
    """A bad option; the message is the standard library's, word for word."""


def getopt(args: list[str], shortopts: str, longopts: list[str], *, gnu: bool = False
           ) -> tuple[list[tuple[str, str]], list[str]]:
    """`getopt.getopt`, or `getopt.gnu_getopt` with `gnu` (options and operands may mix,
    unless `shortopts` starts with `+` or POSIXLY_CORRECT is set)."""
    opts: list[tuple[str, str]] = []
    operands: list[str] = []
    if gnu and shortopts.startswith("+"):
        shortopts = shortopts[1:]
        gnu = False
    elif gnu and os.environ.get("POSIXLY_CORRECT"):
        gnu = False
    while args:
        arg = args[0]
        if arg == "--":
            operands += args[1:]
            return opts, operands
        if arg.startswith("--"):
            args = _long(opts, arg[2:], longopts, args[1:])
        elif arg.startswith("-") and arg != "-":
            args = _short(opts, arg[1:], shortopts, args[1:])
        elif gnu:
            operands.append(arg)
            args = args[1:]
        else:
            break
    return opts, operands + args


def _long(opts: list[tuple[str, str]], text: str, longopts: list[str], rest: list[str]
          ) -> list[str]:
    name, eq, value = text.partition("=")
    matches = [o for o in longopts if o.startswith(name)]
    if not matches:
        raise GetoptError(f"option --{name} not recognized")
    if name in matches:
        full, takes_value = name, False
    elif name + "=" in matches:
        full, takes_value = name, True
    elif len(matches) > 1:
        raise GetoptError(f"option --{name} not a unique prefix")
    else:
        full = matches[0].removesuffix("=")
        takes_value = matches[0].endswith("=")
    if takes_value and not eq:
        if not rest:
            raise GetoptError(f"option --{full} requires argument")
        value, rest = rest[0], rest[1:]
    elif eq and not takes_value:
        raise GetoptError(f"option --{full} must not have an argument")
    opts.append(("--" + full, value))
    return rest


def _short(opts: list[tuple[str, str]], cluster: str, shortopts: str, rest: list[str]
           ) -> list[str]:
    while cluster:
        opt, cluster = cluster[0], cluster[1:]
        at = shortopts.find(opt)
        if opt == ":" or at < 0:
            raise GetoptError(f"option -{opt} not recognized")
        value = ""
        if shortopts.startswith(":", at + 1):
            if not cluster:
                if not rest:
                    raise GetoptError(f"option -{opt} requires argument")
                cluster, rest = rest[0], rest[1:]
            value, cluster = cluster, ""
        opts.append(("-" + opt, value))
    return rest
