"""qrexec-policy-agent: answers policy.Ask, shows policy.Notify
(docs/reference/cli.md#qrexec-policy-agent, docs/reference/policy.md#ask-and-notify).

Front end, first that applies: `--answer-program`; GTK when a display is set and PyGObject
works; the terminal when one is given (`--tty PATH`, or standard input is a terminal); else
every ask is denied and notifications go to stderr. `--frontend` forces one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from ..policy_agent import AgentServer, AnswerProgram, DenyAll, Frontend, TerminalFrontend
from ..system.defaults import POLICY_AGENT_SOCKET
from ..system.log import setup
from . import entry

__all__ = ["main", "run", "DEFAULT_SOCKET"]

DEFAULT_SOCKET = POLICY_AGENT_SOCKET
FRONTENDS = ("auto", "program", "gtk", "terminal", "deny")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrexec-policy-agent")
    parser.add_argument("-s", "--socket-path", default=DEFAULT_SOCKET, metavar="PATH")
    parser.add_argument(
        "--answer-program",
        metavar="PROG",
        help="headless answers: PROG reads the request JSON, prints deny or allow:TARGET",
    )
    parser.add_argument(
        "--frontend", choices=FRONTENDS, default="auto", help="who answers (default: auto)"
    )
    parser.add_argument("--tty", metavar="PATH", help="ask at this terminal (implies terminal)")
    parser.add_argument("--check", action="store_true",
                        help="only say whether the front end can be used here (exit 0) or "
                        "not (exit 1, with the reason)")
    return parser


def _gtk_reason() -> str | None:
    """Why GTK cannot be used, or None."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no DISPLAY or WAYLAND_DISPLAY"
    try:
        from ..policy_agent import gtk  # lazy: PyGObject and GTK are optional
    except (ImportError, ValueError) as err:
        return f"PyGObject with GTK 3 unavailable: {err}"
    if not gtk.display_available():
        return "cannot open the display"
    return None


def _choose(args: argparse.Namespace) -> str:
    if args.frontend != "auto":
        return str(args.frontend)
    if args.answer_program:
        return "program"
    if _gtk_reason() is None:
        return "gtk"
    if args.tty or sys.stdin.isatty():
        return "terminal"
    return "deny"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.frontend == "program" and not args.answer_program:
        parser.error("--frontend=program needs --answer-program")

    kind = _choose(args)
    if args.check:
        reason = _gtk_reason() if kind == "gtk" else None
        if reason is not None:
            print(f"qrexec-policy-agent: cannot use GTK: {reason}", file=sys.stderr)
            return 1
        print(kind)
        return 0
    setup("qrexec-policy-agent", bare=True)
    log = logging.getLogger(__name__)
    os.umask(0o007)
    frontend: Frontend
    try:
        if kind == "program":
            frontend = AnswerProgram(args.answer_program, log)
        elif kind == "terminal":
            if args.tty:
                frontend = TerminalFrontend.open_tty(args.tty, log)
            else:
                frontend = TerminalFrontend(sys.stdin.fileno(), sys.stdout, log)
        elif kind == "gtk":
            reason = _gtk_reason()
            if reason is not None:
                print(f"qrexec-policy-agent: cannot use GTK: {reason}", file=sys.stderr)
                return 1
            from ..policy_agent.gtk import GtkFrontend  # lazy: GTK is optional

            gtk_frontend = GtkFrontend(log)
            server = AgentServer(gtk_frontend, log)
            gtk_frontend.run(lambda: server.serve(args.socket_path))
            return 0
        else:
            frontend = DenyAll(log)
        asyncio.run(AgentServer(frontend, log).serve(args.socket_path))
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as err:
        print(f"qrexec-policy-agent: {err}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
