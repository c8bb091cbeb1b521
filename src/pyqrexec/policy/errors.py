"""Policy errors (docs/reference/policy.md#messages).

Every error is an `AccessDenied`, so code that fails to handle one still denies (fails closed).
"""

from __future__ import annotations

__all__ = ["AccessDenied", "PolicySyntaxError", "PolicyLoadError", "SystemInfoError"]


class AccessDenied(Exception):
    """A request must be denied; `notify` says whether the caller's GUI VM is told."""

    def __init__(self, reason: str, *, notify: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = notify


class PolicySyntaxError(AccessDenied):
    """A policy text is malformed; prints as `file:line: msg`.

    `line` is None for synthetic rules and 0 for text that has no line (a requested target).
    """

    def __init__(self, file: str | None, line: int | None, msg: str) -> None:
        self.file = "<unknown>" if file is None else file
        self.line = line
        self.msg = msg
        super().__init__(f"{self.file}:{line}: {msg}", notify=False)


class PolicyLoadError(AccessDenied):
    """The policy cannot be read (invalid file name, unreadable file): an ordinary denial."""


class SystemInfoError(Exception):
    """System information is unavailable or malformed
    (docs/reference/policy.md#system-information)."""
