"""One policy engine shared by the daemon and qrexec-policy-exec
(docs/reference/policy.md#evaluation steps 1–2, docs/reference/policy.md#reloading).

It fetches system info, reloads the policy when anything changed, runs the pure evaluation,
shows the ask dialog when one is needed, logs and sends notifications.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..host.inotify import InotifyUnavailable
from ..policy.dialogs import Notification
from ..policy.errors import AccessDenied, SystemInfoError
from ..policy.evaluation import Evaluation, Outcome, Request
from ..policy.loaders import DiskFiles, LoadResult, PolicyWatch, load_policy
from ..policy.parser import Policy
from .agent_client import AgentClient, AgentError
from .inotify_watch import InotifyWatch
from .system_info_source import SystemInfoSource

__all__ = ["EngineConfig", "PolicyEngine"]

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Loads in a row when each one finds dependencies not watched yet (a new include, say).
_MAX_LOADS = 4


@dataclass(frozen=True)
class EngineConfig:
    policy_dirs: Sequence[str]
    legacy_dir: str
    qubesd_internal_socket: str
    service_path: Sequence[str]
    qrexec_client: str = "qrexec-client"
    # Notice policy changes with inotify (else, or when it fails, with the stat walk).
    inotify: bool = True


class PolicyEngine:
    def __init__(self, config: EngineConfig, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self.system_info = SystemInfoSource(config.qubesd_internal_socket)
        self.agent = AgentClient(config.service_path, config.qrexec_client)
        self._policy: Policy | AccessDenied | None = None
        self._watch: PolicyWatch | InotifyWatch | None = None
        self._background: set[asyncio.Task[None]] = set()

    def policy(self) -> Policy | AccessDenied:
        """The current policy, reloaded first if anything it depends on changed."""
        if self._policy is None or self._watch is None or self._watch.changed():
            self.reload()
        assert self._policy is not None
        return self._policy

    def reload(self) -> None:
        """Load the policy and start watching what it depends on
        (docs/reference/policy.md#reloading).

        With inotify, the watches are placed before the files are read; a load that finds
        files not watched yet (includes) is done again once they are. Only the last load logs.
        """
        dirs = [*self.config.policy_dirs, self.config.legacy_dir]
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        watch = self._inotify_watch(dirs)
        for _ in range(_MAX_LOADS):
            files = DiskFiles()
            try:
                result: LoadResult | AccessDenied = load_policy(
                    files, self.config.policy_dirs, self.config.legacy_dir
                )
            except AccessDenied as err:
                result = err
            try:
                if watch is None or not watch.add(files):
                    break
            except InotifyUnavailable as err:
                self._inotify_failed(err, watch)
                watch = None
                break
            watch.drain()
        else:
            assert watch is not None
            watch.mark_changed()  # dependencies keep changing: load again on the next request
        self._watch = PolicyWatch(dirs, files) if watch is None else watch
        if isinstance(result, AccessDenied):
            self._policy = result
            self.log.error("error loading policy: %s", result)
        else:
            self._policy = result.policy
            for level, text in result.messages:
                self.log.log(_LEVELS.get(level, logging.INFO), "%s", text)

    def _inotify_watch(self, dirs: list[str]) -> InotifyWatch | None:
        if not self.config.inotify:
            return None
        try:
            return InotifyWatch(dirs)
        except InotifyUnavailable as err:
            self._inotify_failed(err, None)
            return None

    def _inotify_failed(self, err: OSError, watch: InotifyWatch | None) -> None:
        self.log.warning("cannot watch the policy with inotify, comparing stat data: %s", err)
        if watch is not None:
            watch.close()

    async def evaluate(self, request: Request) -> Outcome:
        # The reload check runs while qubesd prepares its answer; a system-info failure still
        # takes precedence over a broken policy (docs/reference/policy.md#evaluation steps 1, 2).
        fetch = self.system_info.get()
        policy = self.policy()
        try:
            info = await fetch
        except SystemInfoError as err:
            return self._emit(Evaluation.system_info_failed(request, str(err)))
        evaluation = Evaluation(request, info, policy)
        outcome = self._emit(evaluation.run())
        if outcome.ask is not None:
            try:
                reply = await self.agent.ask(outcome.ask)
            except AgentError as err:
                return self._emit(evaluation.ask_failed(str(err)))
            outcome = self._emit(evaluation.resolve_ask(reply))
        return outcome

    def _emit(self, outcome: Outcome) -> Outcome:
        for level, text in outcome.log:
            self.log.log(_LEVELS.get(level, logging.INFO), "%s", text)
        for note in outcome.notifications:
            task = asyncio.ensure_future(self._notify(note))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return outcome

    async def _notify(self, note: Notification) -> None:
        try:
            await self.agent.notify(note)
        except AgentError as err:
            self.log.warning("failed to send policy.Notify to %s: %s", note.guivm, err)

    async def drain(self) -> None:
        """Wait for the notifications still being sent."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
