"""qrexec-policy-graph: the policy as a Graphviz digraph of allowed (and asked) calls
(docs/reference/cli.md#qrexec-policy-graph)."""

from __future__ import annotations

import argparse
import sys

from ..policy.errors import AccessDenied, SystemInfoError
from ..policy.graph import GraphOptions, option_error
from ..policy_daemon.snapshot import (
    graph_lines,
    system_info_from_file,
    system_info_from_qubesd,
)
from ..system.environment import Environment
from . import entry

__all__ = ["main", "run"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrexec-policy-graph", description="Graph qrexec policy")
    parser.add_argument("--include-ask", action="store_true", help="draw ask edges (orange)")
    # "extend": a repeated option adds to the list instead of replacing it.
    parser.add_argument(
        "--source", action="extend", nargs="+", default=[], metavar="S", help="only these sources"
    )
    parser.add_argument(
        "--target",
        action="extend",
        nargs="+",
        default=[],
        metavar="T",
        help="only edges to these (actual) targets",
    )
    parser.add_argument(
        "--service",
        action="extend",
        nargs="+",
        default=[],
        metavar="SVC[+ARG]",
        help="only these services",
    )
    parser.add_argument("--output", metavar="FILE", help="write there instead of stdout")
    parser.add_argument(
        "--policy-dir",
        metavar="DIR",
        help="policy directory (default: $QREXEC_POLICY_DIR or /etc/qubes/policy.d)",
    )
    parser.add_argument(
        "--system-info", metavar="FILE", help="internal.GetSystemInfo JSON instead of asking qubesd"
    )
    parser.add_argument(
        "--skip-labels", action="store_true", help="no service names; duplicate edges collapse"
    )
    parser.add_argument(
        "--full-output", action="store_true", help="label edges with argument and action"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    env = Environment.current()
    options = GraphOptions(
        include_ask=args.include_ask,
        sources=args.source,
        targets=args.target,
        services=args.service,
        skip_labels=args.skip_labels,
        full_output=args.full_output,
    )
    error = option_error(options)
    if error is not None:
        parser.error(error)
    try:
        if args.system_info:
            info = system_info_from_file(args.system_info)
        else:
            info = system_info_from_qubesd(env)
    except SystemInfoError as err:
        print(f"qrexec-policy-graph: error getting system info: {err}", file=sys.stderr)
        return 1
    try:
        lines = graph_lines(args.policy_dir or env.persistent_policy_dir, env, info, options)
    except AccessDenied as err:
        print(f"qrexec-policy-graph: error loading policy: {err}", file=sys.stderr)
        return 1
    text = "".join(line + "\n" for line in lines)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        print(f"qrexec-policy-graph: cannot write {args.output}: {err.strerror}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
