"""qubes-policy: list, get, replace or remove policy files through the policy Admin API
(docs/reference/cli.md#qubes-policy), in dom0 or in an admin VM."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ..client import policy_admin as api
from ..client.policy_admin import AdminError, CallFailed, invalid_name_chars
from ..policy.audit import audit_path
from ..policy_daemon.audit_log import AuditLog
from ..policy_daemon.engine import grant_record
from ..policy_daemon.grant_store import GrantStore
from ..system.environment import Environment
from ..system.log import setup
from . import entry

__all__ = ["main", "run"]

_INCLUDE = "include/"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qubes-policy",
        usage="qubes-policy {[-l|--list] | -g|--get | -r|--replace | -d|--remove} "
        "[include/][NAME]\n       qubes-policy --grants | --revoke ID",
    )
    methods = parser.add_mutually_exclusive_group()
    for short, long, method, text in (
        ("-l", "--list", "list", "list the policy files (the default)"),
        ("-g", "--get", "get", "print the content of a policy file"),
        ("-r", "--replace", "replace", "replace a policy file with standard input"),
        ("-d", "--remove", "remove", "remove a policy file"),
        (None, "--grants", "grants", "list the remembered answers to asks (dom0 only)"),
    ):
        names = (short, long) if short else (long,)
        methods.add_argument(
            *names, dest="method", action="store_const", const=method, help=text
        )
    methods.add_argument(
        "--revoke", metavar="ID", help="end the grant ID at once (dom0 only; see --grants)"
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
    env = Environment.current()
    if method == "list":
        names = api.list_names(env, include)
        sys.stdout.write("".join(f"{n}\n" for n in names))
    elif method == "get":
        content, _token = api.get(env, name, include)
        sys.stdout.buffer.write(content.rstrip() + b"\n")
    elif method == "replace":
        api.replace(env, name, sys.stdin.buffer.read(), include=include)
    else:
        api.remove(env, name, include=include)


def _grants(revoke: str | None) -> int:
    """List the grants, or revoke one, in the policy daemon's runtime file (docs/audit.md)."""
    env = Environment.current()
    store = GrantStore(env.grants_path())
    if revoke is None:
        store.refresh()
        if store.problem:
            print(f"qubes-policy: {store.path}: {store.problem}", file=sys.stderr)
            return 1
        now = time.time()
        for live in store.table:
            if live.expires is None or live.expires > now:
                print(live.describe())
        return 0
    try:
        with store.locked() as table:
            grant = table.remove(revoke)
    except OSError as err:
        print(f"qubes-policy: {store.path}: {err}", file=sys.stderr)
        return 1
    if grant is None:
        print(f"qubes-policy: no grant {revoke}", file=sys.stderr)
        return 1
    setup("qubes-policy", bare=True)
    audit = AuditLog(audit_path(env.variables), logging.getLogger(__name__))
    audit.write(grant_record("grant-revoked", grant, reason="qubes-policy --revoke"))
    audit.close()
    print(f"revoked {grant.describe()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.method == "grants" or args.revoke is not None:
        if args.name:
            parser.error("--grants and --revoke take no file name")
        return _grants(args.revoke)
    name: str = args.name
    include = name == "include" or name.startswith(_INCLUDE)
    if include:
        name = name[len(_INCLUDE) :]
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
    entry(main)


if __name__ == "__main__":
    run()
