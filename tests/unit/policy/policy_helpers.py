"""Helpers for the pure policy tests: the system-information fixture and an in-memory
evaluator."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from pyqrexec.policy.errors import AccessDenied
from pyqrexec.policy.evaluation import Evaluation, Outcome, Request
from pyqrexec.policy.loaders import DEFAULT_POLICY_DIRS, MemoryFiles, load_policy
from pyqrexec.policy.parser import Policy
from pyqrexec.policy.system_info import SystemInfo

FIXTURE = Path(__file__).resolve().parents[2] / "data" / "policy-system-info.json"
USER = "/etc/qubes/policy.d/30-user.policy"
COMPAT = "/etc/qubes/policy.d/35-compat.policy"
LEGACY = "/etc/qubes-rpc/policy"


def load(files: Mapping[str, str], dirs: tuple[str, ...] = ()) -> Policy | AccessDenied:
    """Load in-memory files (both default directories exist unless `dirs` says otherwise)."""
    try:
        return load_policy(
            MemoryFiles(files, dirs or DEFAULT_POLICY_DIRS), DEFAULT_POLICY_DIRS, LEGACY
        ).policy
    except AccessDenied as err:
        return err


Run = Callable[..., tuple[Evaluation, Outcome]]


def make_run(info: SystemInfo) -> Run:
    def run(
        files: Mapping[str, str] | str, source: str, target: str, service: str, **flags: object
    ) -> tuple[Evaluation, Outcome]:
        if isinstance(files, str):
            files = {USER: files}
        request = Request(source, target, service, **flags)  # type: ignore[arg-type]
        evaluation = Evaluation(request, info, load(files))
        return evaluation, evaluation.run()

    return run


def answer(outcome: Outcome) -> str:
    """The answer lines joined by ` / `, as the worked examples write them."""
    return " / ".join(outcome.lines)


def logs(*outcomes: Outcome) -> list[str]:
    return [text for o in outcomes for _, text in o.log]
