"""qubes-policy: list, get, replace or remove policy files through the policy Admin API
(cli.md "qubes-policy"), in dom0 or in an admin VM."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "run"]

_INCLUDE = "include/"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qubes-policy",
        usage="qubes-policy {[-l|--list] | -g|--get | -r|--replace | -d|--remove} "
        "[include/][NAME]",
    )
    methods = parser.add_mutually_exclusive_group()
    for short, long, method, text in (
        ("-l", "--list", "list", "list the policy files (the default)"),
        ("-g", "--get", "get", "print the content of a policy file"),
        ("-r", "--replace", "replace", "replace a policy file with standard input"),
        ("-d", "--remove", "remove", "remove a policy file"),
    ):
        methods.add_argument(
            short, long, dest="method", action="store_const", const=method, help=text
        )
    parser.add_argument(
        "name",
        nargs="?",
        default="",
        metavar="[include/][NAME]",
        help="policy file name without .policy; include/NAME for a file of include/",
    )
    parser.set_defaults(method="list")
    return parser


def _run(method: str, name: str, include: bool) -> None:
    from ..client import policy_admin as api

    if method == "list":
        names = api.list_names(include)
        sys.stdout.write("".join(f"{n}\n" for n in names))
    elif method == "get":
        content, _token = api.get(name, include)
        sys.stdout.buffer.write(content.rstrip() + b"\n")
    elif method == "replace":
        api.replace(name, sys.stdin.buffer.read(), include=include)
    else:
        api.remove(name, include=include)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    name: str = args.name
    include = name == "include" or name.startswith(_INCLUDE)
    if include:
        name = name[len(_INCLUDE) :]
    from ..client.policy_admin import AdminError, CallFailed, invalid_name_chars

    bad = invalid_name_chars(name)
    if bad:
        parser.error(f"invalid character(s) in RPCNAME: {bad!r}")
    if args.method == "list" and name:
        parser.error("--list doesn't work with a file name")
    if args.method != "list" and not name:
        parser.error("you need to provide a file name")
    try:
        _run(args.method, name, include)
    except AdminError as err:
        print(err.message, file=sys.stderr)
        return 1
    except CallFailed as err:
        output = err.output.decode("utf-8", "replace").rstrip()
        print("Command failed" + (f"\n{output}" if output else ""), file=sys.stderr)
        return 1
    sys.stdout.flush()
    return 0


def run() -> None:
    from . import entry

    entry(main)


if __name__ == "__main__":
    run()
