"""The policy Admin API (docs/reference/cli.md#qubes-policy-admin): request checks, tokens,
validation.

Pure: the service program reads the directory, holds the lock and writes files; this module
decides what a request means and whether a change may be made. Errors are `PolicyAdminException`
subclasses whose class name is part of what the caller sees (`ClassName message`), so the names
are those of upstream Qubes and clients can map them back.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from .errors import PolicySyntaxError
from .loaders import Files, OverlayFiles, load_policy
from .parser import Rule, split_lines

__all__ = [
    "PolicyAdminException",
    "PolicyAdminProtocolException",
    "PolicyAdminTokenException",
    "PolicyAdminSyntaxException",
    "PolicyAdminFileNotFoundException",
    "PolicyAdminInvalidFileNameException",
    "PolicyAdminInvalidFilePathException",
    "ERROR_CLASS_NAMES",
    "Op",
    "Method",
    "METHODS",
    "Request",
    "parse_request",
    "check_file_name",
    "check_service",
    "compute_token",
    "check_token",
    "split_replace_payload",
    "validate_change",
    "listing",
    "files_for_service",
]

_ARG_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+._-")
_SERVICE_CHARS = _ARG_CHARS - {"+"}
_FILE_NAME = re.compile(r"[A-Za-z0-9_-]+")


class PolicyAdminException(Exception):
    """An error meant for the caller."""

    def wire(self) -> str:
        """What the service writes on stderr (no newline)."""
        return f"{type(self).__name__} {self}"


class PolicyAdminProtocolException(PolicyAdminException):
    """The request itself is malformed."""


class PolicyAdminTokenException(PolicyAdminException):
    """The file is not in the state the caller's token says."""


class PolicyAdminSyntaxException(PolicyAdminException):
    """The policy with the change applied does not load."""


class PolicyAdminFileNotFoundException(PolicyAdminException):
    pass


class PolicyAdminInvalidFileNameException(PolicyAdminException):
    pass


class PolicyAdminInvalidFilePathException(PolicyAdminException):
    pass


ERROR_CLASS_NAMES = frozenset(
    cls.__name__
    for cls in (
        PolicyAdminException,
        PolicyAdminProtocolException,
        PolicyAdminTokenException,
        PolicyAdminSyntaxException,
        PolicyAdminFileNotFoundException,
        PolicyAdminInvalidFileNameException,
        PolicyAdminInvalidFilePathException,
    )
)


class Op(Enum):
    LIST = "List"
    GET = "Get"
    REPLACE = "Replace"
    REMOVE = "Remove"
    GET_FILES = "GetFiles"


@dataclass(frozen=True, slots=True)
class Method:
    op: Op
    include: bool  # works on `include/` rather than on `*.policy`

    @property
    def takes_arg(self) -> bool:
        return self.op is not Op.LIST

    @property
    def takes_payload(self) -> bool:
        return self.op in (Op.REPLACE, Op.REMOVE)


METHODS: dict[str, Method] = {
    **{f"policy.{op.value}": Method(op, False) for op in Op},
    **{f"policy.include.{op.value}": Method(op, True) for op in Op if op is not Op.GET_FILES},
}


@dataclass(frozen=True, slots=True)
class Request:
    method: Method
    argument: str
    payload: bytes


def parse_request(full_name: str, payload: bytes) -> Request:
    """`SERVICE+ARG` and the payload, checked in the documented order (no I/O needed)."""
    name, _, argument = full_name.partition("+")
    if not set(argument) <= _ARG_CHARS:
        raise PolicyAdminProtocolException(
            f'Invalid argument: "{argument}"\n'
            "Valid characters are letters, numbers, dot, plus, hyphen and underline"
        )
    method = METHODS.get(name)
    if method is None:
        raise PolicyAdminProtocolException(f"unrecognized method: {name}")
    if argument and not method.takes_arg:
        raise PolicyAdminProtocolException("Unexpected argument")
    if payload and not method.takes_payload:
        raise PolicyAdminProtocolException("Unexpected payload")
    return Request(method, argument, payload)


def check_file_name(name: str) -> None:
    if not _FILE_NAME.fullmatch(name):
        raise PolicyAdminInvalidFileNameException(
            f"Invalid policy file name: {name}\n"
            "Names must contain only alphanumeric characters, underscore and hyphen."
        )


def check_service(service: str) -> None:
    """The argument of `policy.GetFiles`."""
    if not service:
        raise PolicyAdminProtocolException("Service cannot be empty.")
    bad = tuple(sorted(set(service) - _SERVICE_CHARS))
    if bad:
        raise PolicyAdminProtocolException(
            f"Service {service!r} contains invalid characters: {bad!r}"
        )


def compute_token(content: bytes) -> bytes:
    return b"sha256:" + hashlib.sha256(content).hexdigest().encode("ascii")


def check_token(token: bytes, current: bytes | None) -> None:
    """`current` is the file's content, None when it does not exist."""
    if token == b"any":
        return
    if token == b"new":
        if current is not None:
            raise PolicyAdminTokenException("File exists but token is 'new'")
        return
    if not token.startswith(b"sha256:"):
        raise PolicyAdminProtocolException("Unrecognized token")
    if current is None:
        raise PolicyAdminTokenException("File doesn't exist, but token isn't 'new'")
    if compute_token(current) != token:
        raise PolicyAdminTokenException("Token mismatch")


def split_replace_payload(payload: bytes) -> tuple[bytes, bytes]:
    """`TOKEN\\n` + content."""
    if b"\n" not in payload:
        raise PolicyAdminProtocolException("Payload needs to include first line with token")
    token, content = payload.split(b"\n", 1)
    return token, content


def validate_change(
    files: Files, policy_dir: str, legacy_dir: str, path: str, content: bytes | None
) -> None:
    """Load the policy of `policy_dir` as it would be with `path` replaced (None: removed).

    A syntax error becomes `PolicyAdminSyntaxException`; `PolicyLoadError` (an invalid file
    name, an unreadable file) is left to the caller, as it is no fault of this change's text.
    """
    try:
        if content is not None:
            split_lines(content, path)  # UTF-8, even for an include file nobody includes
        overlay = OverlayFiles(files, {path: content})
        load_policy(overlay, [policy_dir], legacy_dir, overlay.removed)
    except PolicySyntaxError as err:
        raise PolicyAdminSyntaxException(f"Policy change validation failed: {err}") from err


def listing(names: Iterable[str], suffix: str) -> bytes:
    """`NAME\\n` for every name ending in `suffix` (removed), sorted."""
    chosen = sorted(n[: len(n) - len(suffix)] for n in names if n.endswith(suffix) and n != suffix)
    return "".join(f"{n}\n" for n in chosen).encode("utf-8", "surrogateescape")


def files_for_service(rules: Sequence[Rule], service: str, policy_dirs: Sequence[str]) -> bytes:
    """`FILE\\n` for each file holding a rule for `service` or `*`, in rule order, once.

    A file under one of `policy_dirs` (the directory as named and as resolved) is named by its
    stem, any other (a legacy file) by its path.
    """
    prefixes = tuple(d.rstrip("/") + "/" for d in policy_dirs)
    seen: dict[str, None] = {}
    for rule in rules:
        if rule.service not in (service, "*"):
            continue
        if rule.file.startswith(prefixes):
            name = posixpath.splitext(posixpath.basename(rule.file))[0]
        else:
            name = rule.file
        seen.setdefault(name, None)
    return "".join(f"{n}\n" for n in seen).encode("utf-8", "surrogateescape")
