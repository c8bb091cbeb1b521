"""qrexec-policy-daemon: the resident policy evaluator (docs/reference/cli.md#qrexec-policy-daemon,
docs/reference/policy.md#policy-daemon-socket, docs/reference/policy.md#evalsimple-and-evalgui)."""

from __future__ import annotations

import argparse
import asyncio
import grp
import logging
import os
import sys

from ..policy.audit import audit_path
from ..policy_daemon.audit_log import AuditLog
from ..policy_daemon.config import engine_config
from ..policy_daemon.engine import PolicyEngine
from ..policy_daemon.grant_store import GrantStore
from ..policy_daemon.server import PolicyServer
from ..system.environment import Environment
from ..system.log import setup
from ..system.parent_death import keep_parent_death_signal
from . import entry

__all__ = ["main", "run"]


def _parser(env: Environment) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrexec-policy-daemon")
    parser.add_argument(
        "--policy-path",
        action="append",
        metavar="PATH",
        help="policy directory (repeatable; replaces both defaults)",
    )
    parser.add_argument(
        "--socket-path",
        default=env.policy_socket,
    )
    parser.add_argument("--eval-socket-path", default="/etc/qubes-rpc/policy.EvalSimple")
    parser.add_argument("--gui-socket-path", default="/etc/qubes-rpc/policy.EvalGUI")
    parser.add_argument(
        "--no-audit",
        action="store_true",
        help="do not keep the audit trail $QREXEC_LOG_DIR/qrexec-audit.jsonl (docs/audit.md)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    env = Environment.current()
    args = _parser(env).parse_args(argv)

    os.umask(0o007)
    if os.geteuid() == 0:
        try:
            # qrexec-host starts the daemon to die with it; the new group would cancel that
            with keep_parent_death_signal():
                os.setgid(grp.getgrnam("qubes").gr_gid)
        except (KeyError, OSError) as err:
            print(f"qrexec-policy-daemon: cannot switch to group qubes: {err}", file=sys.stderr)
    setup("qrexec-policy-daemon", bare=True)
    log = logging.getLogger(__name__)
    engine = PolicyEngine(engine_config(env, args.policy_path, grants=True), log)
    engine.reload()  # a broken policy is logged here and denies every call until fixed
    if not args.no_audit:
        engine.audit = AuditLog(audit_path(env.variables), log)
        engine.audit.reopen()
    engine.grants = GrantStore(env.grants_path(args.socket_path))
    server = PolicyServer(engine, log)

    async def serve() -> None:
        engine.start_grants()
        await server.serve(args.socket_path, args.eval_socket_path, args.gui_socket_path)

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        return 0
    except OSError as err:
        print(f"qrexec-policy-daemon: {err}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
