""""Always" answers as rules, written through the policy Admin API (docs/audit.md).

They all go into one file, `25-user-grants.policy`, each under a comment saying who answered
and when; the change is validated against the whole policy like any Admin API change. Rules of
files after it are still reached for every other request, since each rule names one source,
one requested target, one service and one argument.
"""

from __future__ import annotations

import time

from ..policy.admin import METHODS, PolicyAdminFileNotFoundException, Request
from ..policy.evaluation import Evaluation
from ..policy.grants import always_rule
from .admin_directory import PolicyDirectory

__all__ = ["GRANTS_FILE_NAME", "add_always_rule"]

GRANTS_FILE_NAME = "25-user-grants"
_HEADER = (
    b"# Answers given as \"always\" to qrexec ask dialogs (written by qrexec-policy-daemon).\n"
    b"# Edit or remove like any policy file (qubes-policy, qubes-policy-editor).\n"
)


def add_always_rule(policy_dir: str, legacy_dir: str, evaluation: Evaluation, chosen: str,
                    who: str) -> tuple[str, str]:
    """Append the rule; (file name, rule text). Raises what the Admin API raises."""
    assert evaluation.rule is not None
    rule = always_rule(evaluation.rule, evaluation.source, evaluation.req, evaluation.service,
                       evaluation.argument, chosen)
    who = "".join(c for c in who if c.isascii() and (c.isalnum() or c in "_.-")) or "?"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    comment = f"# {when} answered by the user of {who} (ask rule {evaluation.rule.where})\n"
    directory = PolicyDirectory(policy_dir, legacy_dir)
    try:
        current = directory.handle(Request(METHODS["policy.Get"], GRANTS_FILE_NAME, b""))
        token, content = current.split(b"\n", 1)
    except PolicyAdminFileNotFoundException:
        token, content = b"new", _HEADER
    if content and not content.endswith(b"\n"):
        content += b"\n"
    content += comment.encode() + rule.encode() + b"\n"
    directory.handle(Request(METHODS["policy.Replace"], GRANTS_FILE_NAME,
                             token + b"\n" + content))
    return GRANTS_FILE_NAME + ".policy", rule
