"""One policy engine shared by the daemon and qrexec-policy-exec
(docs/reference/policy.md#evaluation steps 1–2, docs/reference/policy.md#reloading).

It fetches system info, reloads the policy when anything changed, runs the pure evaluation,
shows the ask dialog when one is needed, logs and sends notifications.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..policy.audit import answer_target, decision_fields, utc_ms
from ..policy.dialogs import Notification
from ..policy.errors import AccessDenied, SystemInfoError
from ..policy.evaluation import Evaluation, Outcome, Request, split_service
from ..policy.grants import (
    ALWAYS,
    HALT,
    REMEMBER_OFFER,
    Grant,
    Remember,
    new_grant_id,
    rule_id,
    running,
    split_reply,
    unusable,
)
from ..policy.loaders import DiskFiles, LoadResult, PolicyWatch, load_policy
from ..policy.parser import Policy
from ..policy.system_info import SystemInfo
from ..system.inotify import InotifyUnavailable
from ..transport.aio import BackgroundTasks
from .agent_client import AgentClient, AgentError
from .audit_log import AuditLog
from .grant_rules import add_always_rule
from .grant_store import GrantStore
from .inotify_watch import InotifyWatch
from .system_info_source import SystemInfoSource

__all__ = ["EngineConfig", "PolicyEngine"]

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Loads in a row when each one finds dependencies not watched yet (a new include, say).
_MAX_LOADS = 4
#: decisions' formatted audit fields kept for reuse, and the longest kept (names come from
#: domains: the cache stays small whatever they send)
_AUDIT_CACHE_SIZE = 1024
_MAX_CACHED_FIELDS = 2048


@dataclass(frozen=True)
class EngineConfig:
    policy_dirs: Sequence[str]
    legacy_dir: str
    qubesd_internal_socket: str
    service_path: Sequence[str]
    qrexec_client: str = "qrexec-client"
    # Notice policy changes with inotify (else, or when it fails, with the stat walk).
    inotify: bool = True
    #: where "always" answers become rules (through the Admin API); None: not offered
    persistent_dir: str | None = None


class PolicyEngine:
    def __init__(self, config: EngineConfig, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self.system_info = SystemInfoSource(config.qubesd_internal_socket)
        self.agent = AgentClient(config.service_path, config.qrexec_client)
        self._policy: Policy | AccessDenied | None = None
        self._watch: PolicyWatch | InotifyWatch | None = None
        self._background = BackgroundTasks()
        #: the audit trail and the grants, when this engine keeps them (the policy daemon)
        self.audit: AuditLog | None = None
        self._audit_fields: dict[tuple[object, ...], str] = {}
        self.grants: GrantStore | None = None
        self._sweep: asyncio.TimerHandle | None = None

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

    async def evaluate(self, request: Request, call: str | None = None) -> Outcome:
        """Decide `request`; with a `call` id, the decision goes to the audit trail."""
        # The reload check runs while qubesd prepares its answer; a system-info failure still
        # takes precedence over a broken policy (docs/reference/policy.md#evaluation steps 1, 2).
        fetch = self.system_info.get()
        policy = self.policy()
        try:
            info = await fetch
        except SystemInfoError as err:
            outcome = self._emit(Evaluation.system_info_failed(request, str(err)))
            self._audit_decision(call, request, outcome, None, None, None)
            return outcome
        evaluation = Evaluation(request, info, policy)
        outcome = self._emit(evaluation.run())
        asked: bool | None = None
        reply: str | None = None
        grant: Grant | None = None
        if outcome.ask is not None:
            try:
                grant = self._grant_for(evaluation, info)
            except OSError as err:  # the grants file cannot be handled: ask, as without
                self.log.error("cannot use the grants file: %s", err)
            if grant is not None:
                outcome = self._emit(evaluation.resolve_ask(grant.answer))
            else:
                outcome, asked, reply = await self._ask(evaluation, outcome, call)
        self._audit_decision(call, request, outcome, grant, asked, reply)
        return outcome

    async def _ask(
        self, evaluation: Evaluation, outcome: Outcome, call: str | None
    ) -> tuple[Outcome, bool, str | None]:
        ask = outcome.ask
        assert ask is not None
        offer = self._offer()
        if offer:
            ask = dataclasses.replace(ask, remember=offer)
        try:
            raw = await self.agent.ask(ask)
        except AgentError as err:
            return self._emit(evaluation.ask_failed(str(err))), True, None
        reply, remember = split_reply(raw, offer)
        outcome = self._emit(evaluation.resolve_ask(reply))
        if remember is not None and (outcome.allowed or reply == "deny"):
            if remember.kind == ALWAYS:
                await self._always(evaluation, reply, ask.guivm, call)
            else:
                try:
                    self._remember(evaluation, reply, remember, ask.guivm, call)
                except OSError as err:  # the answer still counts, once
                    self.log.error("cannot keep a grant: %s", err)
        return outcome, True, raw[:256]

    # -- grants ---------------------------------------------------------------------------

    def _offer(self) -> tuple[str, ...]:
        if self.grants is None:
            return ()
        if self.config.persistent_dir is None:
            return tuple(o for o in REMEMBER_OFFER if o != ALWAYS)
        return REMEMBER_OFFER

    def _refresh_grants(self) -> None:
        """Take in what other programs changed (a revoke), and let expired grants go."""
        assert self.grants is not None
        self.grants.refresh()
        expired = self.grants.table.expired(time.time())
        if expired:
            with self.grants.locked() as table:
                for grant in expired:
                    table.remove(grant.id)
            for grant in expired:
                self._audit_grant("grant-expired", grant, reason="expired")

    def _grant_for(self, evaluation: Evaluation, info: SystemInfo) -> Grant | None:
        """A live grant made by this very ask rule for this very request, if any."""
        if self.grants is None or evaluation.rule is None:
            return None
        self._refresh_grants()
        key = (evaluation.source, evaluation.req, evaluation.service, evaluation.argument)
        grant = self.grants.table.find(key, rule_id(evaluation.rule))
        if grant is None:
            return None
        why = unusable(grant, evaluation.candidates, info, time.time())
        if why in ("", "not a choice"):  # no longer a choice: ask, as without a grant
            seen = running(grant.halts, info)
            if not why and not set(seen) <= set(grant.seen):
                grant = dataclasses.replace(grant, seen=tuple(dict.fromkeys(grant.seen + seen)))
                with self.grants.locked() as table:
                    table.add(grant)
            return None if why else grant
        with self.grants.locked() as table:
            table.remove(grant.id)
        self._audit_grant("grant-expired", grant, reason=why)
        return None

    def _remember(
        self, evaluation: Evaluation, reply: str, remember: Remember, guivm: str, call: str | None
    ) -> None:
        """A grant for this request and this ask rule; "until halt" ends when the source or
        the chosen qube, once seen running, is seen halted."""
        assert self.grants is not None and evaluation.rule is not None
        now = time.time()
        halts: tuple[str, ...] = ()
        if remember.kind == HALT:
            chosen = reply[6:] if reply.startswith("allow:") else evaluation.req
            halts = (evaluation.source,)
            if not chosen.startswith("@") and chosen != "dom0" and chosen != evaluation.source:
                halts += (chosen,)
        grant = Grant(
            new_grant_id(), evaluation.source, evaluation.req, evaluation.service,
            evaluation.argument, rule_id(evaluation.rule), reply, now,
            None if remember.kind == HALT else now + remember.seconds, halts, guivm,
            running(halts, evaluation.info),
        )
        with self.grants.locked() as table:
            table.add(grant)
        self._audit_grant("grant-created", grant, call=call)
        self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        """Expiry is recorded when it happens, not only when the grant is next looked at."""
        assert self.grants is not None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        when = self.grants.table.next_expiry()
        if when is None:
            return
        loop = asyncio.get_running_loop()
        self._sweep = loop.call_later(max(0.0, when - time.time()) + 0.01, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        try:
            self._refresh_grants()
        except OSError as err:
            self.log.warning("cannot update the grants file: %s", err)
        self._schedule_sweep()

    def start_grants(self) -> None:
        """At start: grants kept from before a restart go on; expired ones end now."""
        if self.grants is not None:
            self._refresh_grants()
            self._schedule_sweep()

    async def _always(
        self, evaluation: Evaluation, reply: str, guivm: str, call: str | None
    ) -> None:
        assert self.config.persistent_dir is not None and evaluation.rule is not None
        try:
            name, rule_text = await asyncio.to_thread(
                add_always_rule, self.config.persistent_dir, self.config.legacy_dir,
                evaluation, reply[6:], guivm,
            )
        except Exception as err:  # an invalid change, a full disk: the answer counts once
            self.log.error("cannot write the rule for an 'always' answer: %s", err)
            return
        self.log.info("qrexec: %s%s: %s -> %s: allowed always by %s in %s", evaluation.service,
                      evaluation.argument, evaluation.source, evaluation.req, guivm, name)
        grant = Grant("always", evaluation.source, evaluation.req, evaluation.service,
                      evaluation.argument, rule_id(evaluation.rule), reply, time.time(), None,
                      (), guivm)
        self._audit_grant("grant-created", grant, call=call, kind=ALWAYS, file=name,
                          written=rule_text)

    # -- the audit trail ------------------------------------------------------------------

    def _audit_decision(
        self, call: str | None, request: Request, outcome: Outcome, grant: Grant | None,
        asked: bool | None, reply: str | None,
    ) -> None:
        if self.audit is None or call is None:
            return
        rule = outcome.rule
        # most decisions repeat an earlier one but for the call id and the time: their
        # fields are formatted once (the key holds everything they are made of)
        key = None
        if grant is None and asked is None:
            key = (request.source, request.requested_source, request.intended_target,
                   request.service_and_arg, tuple(outcome.lines), outcome.reason,
                   None if rule is None else (rule.file, rule.line))
            fields = self._audit_fields.get(key)
            if fields is not None:
                self.audit.write_fields("decision", call, fields)
                return
        service, argument = split_service(request.service_and_arg)
        target = uuid = None
        if outcome.allowed:
            target, uuid = answer_target(outcome.lines)
        fields = decision_fields(
            request.source,
            request.requested_source or None,
            request.intended_target,
            target,
            uuid,
            service,
            argument,
            outcome.allowed,
            rule.where if rule is not None else None,
            grant.id if grant is not None else None,
            bool(asked),
            grant.answer if grant is not None else reply,
            outcome.reason or None,
        )
        if key is not None and len(fields) <= _MAX_CACHED_FIELDS:
            if len(self._audit_fields) >= _AUDIT_CACHE_SIZE:
                self._audit_fields.clear()
            self._audit_fields[key] = fields
        self.audit.write_fields("decision", call, fields)

    def _audit_grant(self, event: str, grant: Grant, **extra: Any) -> None:
        if self.audit is not None:
            self.audit.write(grant_record(event, grant, **extra))

    def _emit(self, outcome: Outcome) -> Outcome:
        for level, text in outcome.log:
            self.log.log(_LEVELS.get(level, logging.INFO), "%s", text)
        for note in outcome.notifications:
            self._background.start(self._notify(note))
        return outcome

    async def _notify(self, note: Notification) -> None:
        try:
            await self.agent.notify(note)
        except AgentError as err:
            self.log.warning("failed to send policy.Notify to %s: %s", note.guivm, err)

    async def drain(self) -> None:
        """Wait for the notifications still being sent."""
        while self._background:
            await asyncio.gather(*self._background.tasks, return_exceptions=True)


def grant_record(event: str, grant: Grant, **extra: Any) -> dict[str, Any]:
    """An audit record about a grant (docs/audit.md)."""
    kind = "for" if grant.expires is not None else HALT
    return {
        "event": event,
        "grant": grant.id,
        "kind": kind,
        "source": grant.source,
        "target": grant.target,
        "service": grant.service,
        "argument": grant.argument,
        "answer": grant.answer,
        "rule": grant.where,
        "expires": None if grant.expires is None else utc_ms(grant.expires),
        "halts": list(grant.halts),
        "by": grant.guivm,
        **extra,
    }
