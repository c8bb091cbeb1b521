"""The daemon's table of call requests waiting for their policy answer
(docs/reference/protocol.md#trigger-validation steps 7-8). Pure bookkeeping: running the
requests is the daemon's business."""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

from .constants import MAX_CLIENTS
from .control import ServiceRequest

__all__ = ["PendingRequest", "Full", "PendingTable"]


class PendingRequest:
    """A trigger waiting for its policy answer (reference: Trigger validation, 8)."""

    __slots__ = ("ident", "request", "answered")

    def __init__(self, ident: bytes, request: ServiceRequest) -> None:
        self.ident = ident
        self.request = request
        #: an allow went to the agent (SERVICE_CONNECT), or a client answered it (Legacy
        #: connect mode)
        self.answered = False


P = TypeVar("P", bound=PendingRequest)


class Full(enum.Enum):
    """Why a request is not admitted."""

    #: as many requests as the table holds are pending or finishing
    TOO_MANY = "too many pending requests"
    #: a request with this ident is pending and not answered yet
    DUPLICATE = "duplicate request ident"


class PendingTable(Generic[P]):
    """Pending requests by ident, and answered ones whose worker still runs."""

    def __init__(self, limit: int = MAX_CLIENTS) -> None:
        self.limit = limit
        self.pending: dict[bytes, P] = {}
        #: answered requests whose worker still runs (their idents may be reused)
        self.finishing: list[P] = []

    def admit(self, ident: bytes) -> Full | None:
        """Whether a new request `ident` may be added (None: yes).

        An answered request under the same ident moves to `finishing` first: the agent has
        closed that request's socket and may reuse its ident (a disposable call's worker
        waits for the call's end)."""
        if len(self.pending) + len(self.finishing) >= self.limit:
            return Full.TOO_MANY
        earlier = self.pending.get(ident)
        if earlier is not None and earlier.answered:
            del self.pending[ident]
            self.finishing.append(earlier)
        if ident in self.pending:
            return Full.DUPLICATE
        return None

    def add(self, req: P) -> None:
        """Hold `req`, which `admit` has let in."""
        if req.ident in self.pending:
            raise ValueError(f"request {req.ident!r} is pending already")
        self.pending[req.ident] = req

    def done(self, req: P) -> None:
        """`req`'s worker has ended."""
        if self.pending.get(req.ident) is req:
            del self.pending[req.ident]
        self.finishing = [r for r in self.finishing if r is not req]

    def by_client_ident(self, ident: bytes) -> P | None:
        """The pending request a client's SERVICE_CONNECT names (its ident up to the NUL)."""
        for key, req in self.pending.items():
            if key[: key.find(b"\0")] == ident:
                return req
        return None

    def drop_pending(self) -> list[P]:
        """The agent is gone: forget the pending requests (their idents mean nothing to a
        new agent) and return them."""
        dropped = list(self.pending.values())
        self.pending.clear()
        return dropped
