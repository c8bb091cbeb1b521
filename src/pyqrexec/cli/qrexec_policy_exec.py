"""qrexec-policy-exec (also installed as qrexec-policy): one-shot policy evaluation.

3 arguments: evaluate and print the answer (docs/reference/policy.md#policy-program).
5 arguments (deprecated): evaluate and run the allowed call through `qrexec-client -c`
(docs/reference/cli.md#qrexec-policy-exec). `--explain`: show how the decision was reached,
without dialogs, notifications or log lines.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

from ..policy.errors import AccessDenied, SystemInfoError
from ..policy.evaluation import Evaluation, Outcome, Request, split_service
from ..policy.grants import Grant, rule_id, unusable
from ..policy.loaders import DiskFiles, load_policy
from ..policy.system_info import SystemInfo
from ..policy_daemon.config import engine_config
from ..policy_daemon.engine import PolicyEngine
from ..policy_daemon.grant_store import GrantStore
from ..qubesd.client import QubesdError, call
from ..system.environment import Environment
from ..system.log import setup
from . import entry

__all__ = ["main", "run"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrexec-policy-exec")
    parser.add_argument("--assume-yes-for-ask", action="store_true")
    parser.add_argument("--just-evaluate", action="store_true")
    parser.add_argument("--path", action="append", metavar="PATH", help="policy directory")
    parser.add_argument(
        "--explain", action="store_true", help="show the deciding rule and the rules before it"
    )
    parser.add_argument("args", nargs="*", metavar="ARG")
    return parser


def _evaluate(env: Environment, args: argparse.Namespace, source: str, target: str,
              service: str) -> Outcome:
    setup("qrexec-policy-exec", bare=True, syslog=True)
    request = Request(source, target, service, "", args.assume_yes_for_ask, args.just_evaluate)
    engine = PolicyEngine(engine_config(env, args.path), logging.getLogger(__name__))

    async def evaluate() -> Outcome:
        outcome = await engine.evaluate(request)
        await engine.drain()
        return outcome

    return asyncio.run(evaluate())


def _explain(env: Environment, args: argparse.Namespace, source: str, target: str,
             service: str) -> int:
    config = engine_config(env, args.path)
    try:
        info = SystemInfo.from_json(
            call("internal.GetSystemInfo", "dom0", path=config.qubesd_internal_socket)
        )
    except (QubesdError, SystemInfoError) as err:
        print(f"qrexec-policy-exec: error getting system info: {err}", file=sys.stderr)
        return 1
    try:
        policy = load_policy(DiskFiles(), config.policy_dirs, config.legacy_dir).policy
    except AccessDenied as err:
        print(f"decision: deny\nreason: {err}")
        return 1
    request = Request(source, target, service, "", args.assume_yes_for_ask, False)
    evaluation = Evaluation(request, info, policy)
    outcome = evaluation.run()
    if outcome.ask is not None:
        grant = _live_grant(env, evaluation)
        if grant is not None:
            print(f"decision: {'deny' if grant.answer == 'deny' else 'allow'} (remembered)")
            print(f"decided by: {grant.describe()}")
        else:
            print("decision: ask")
        print(f"candidates: {' '.join(outcome.ask.targets)}")
        if outcome.ask.default_target:
            print(f"default target: {outcome.ask.default_target}")
    else:
        print(f"decision: {'allow' if outcome.allowed else 'deny'}")
        if outcome.reason:
            print(f"reason: {outcome.reason}")
        for line in outcome.lines:
            print(f"answer: {line}")
    rule = outcome.rule
    print(f"rule: {rule.where}: {rule}" if rule else "rule: no matching rule")
    print(f"considered before ({len(evaluation.considered)}):")
    for passed, why in evaluation.considered:
        print(f"  {passed.where}: {passed}  ({why})")
    return 0 if outcome.allowed else 1


def _live_grant(env: Environment, evaluation: Evaluation) -> Grant | None:
    """The policy daemon's grant for the ask rule reached, if one lives (docs/audit.md)."""
    assert evaluation.rule is not None
    store = GrantStore(env.grants_path())
    store.refresh()
    key = (evaluation.source, evaluation.req, evaluation.service, evaluation.argument)
    grant = store.table.find(key, rule_id(evaluation.rule))
    if grant is None or unusable(grant, evaluation.candidates, evaluation.info, time.time()):
        return None
    return grant


def _execute(env: Environment, args: argparse.Namespace, outcome: Outcome) -> int:
    """Run an allowed call the deprecated way: `qrexec-client -c`
    (docs/reference/cli.md#qrexec-policy-exec, 5 arguments)."""
    domid, source, target, service_and_arg, ident = args.args
    answer = dict(line.split("=", 1) for line in outcome.lines)
    service, argument = split_service(service_and_arg)
    flags = "-Ed"
    if answer["target"] == "dom0":
        requested = target or "@default"
        keyword = requested.startswith("@")
        name = requested[1:] if keyword else requested
        destination = "dom0"
        command = f"QUBESRPC {service}{argument} {source} {'keyword' if keyword else 'name'} {name}"
    else:
        destination = answer["target_uuid"]
        command = f"{answer['user']}:QUBESRPC {service}{argument} {source}"
        try:
            if destination.startswith("@dispvm:"):
                template = destination[len("@dispvm:") :]
                destination = call("admin.vm.CreateDisposable", template, payload=b"uuid",
                                   path=env.qubesd_socket).decode()
                flags = "-EWkd"
            if answer["autostart"] == "True" or flags == "-EWkd":
                try:
                    call("admin.vm.Start", destination, path=env.qubesd_socket)
                except QubesdError as err:
                    if err.exc_type != "QubesVMNotHaltedError":
                        raise
        except QubesdError as err:
            print(f"qrexec-policy-exec: cannot start {destination}: {err}", file=sys.stderr)
            return 1
    argv = ["qrexec-client", flags, destination, "-c", f"{ident},{source},{domid}", "--", command]
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        print(f"qrexec-policy-exec: cannot run qrexec-client: {err}", file=sys.stderr)
    return 1


def _warn_missing(env: Environment, args: argparse.Namespace) -> None:
    """A policy that is not where this program looks gives wrong answers, not errors."""
    dirs = args.path or env.policy_dirs
    if not any(os.path.isdir(d) for d in dirs):
        print(f"qrexec-policy-exec: warning: no policy directory found ({', '.join(dirs)}); "
              "set QREXEC_POLICY_DIR or give --path", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    count = len(args.args)
    env = Environment.current()
    _warn_missing(env, args)
    if args.explain:
        if count != 3:
            parser.error(f"--explain takes 3 positional arguments, not {count}")
        return _explain(env, args, *args.args)
    if count not in (3, 5):
        parser.error(f"Must have 3 or 5 positional arguments, not {count}")
    source, target, service = args.args[-4:-1] if count == 5 else args.args
    outcome = _evaluate(env, args, source, target, service)
    if count == 3:
        if not args.just_evaluate:
            sys.stdout.write(outcome.answer + "\n")
        return 0 if outcome.allowed else 1
    if not outcome.allowed:
        return 1
    if args.just_evaluate:
        return 0
    return _execute(env, args, outcome)


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
