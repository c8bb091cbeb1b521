"""Calling the policy Admin API from dom0 or an admin VM (docs/reference/cli.md#qubes-policy).

In dom0 (VCHAN_DOMAIN unset or 0) a call runs `qrexec-client -d dom0 "DEFAULT:QUBESRPC
policy.X[+NAME] dom0"`, in a VM `qrexec-client-vm -- dom0 policy.X[+NAME]`. A refusal by the
service (`PolicyAdmin…Exception message` on stderr) becomes `AdminError`; any other failure
`CallFailed`. Used by qubes-policy and qubes-policy-editor.
"""

from __future__ import annotations

import shutil
import subprocess

from ..policy.admin import ERROR_CLASS_NAMES
from ..system.environment import Environment
from ..system.programs import program_argv

__all__ = [
    "AdminError",
    "CallFailed",
    "NOT_FOUND",
    "NAME_CHARS",
    "invalid_name_chars",
    "call_argv",
    "call",
    "list_names",
    "get",
    "replace",
    "remove",
]

NOT_FOUND = "PolicyAdminFileNotFoundException"
#: what a file name given to the tools may contain (RPC name characters)
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+._-")


class AdminError(Exception):
    """The service refused: `kind` is the exception class name it reported."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class CallFailed(subprocess.CalledProcessError):
    """The call failed some other way (refused by policy, internal error, no qrexec)."""


def invalid_name_chars(name: str) -> str:
    """The offending characters of `name`, sorted, as one string ('' when it is valid)."""
    return "".join(sorted(set(name) - NAME_CHARS))


def _program(name: str) -> list[str]:
    """The installed program on PATH, else as other pyqrexec code starts its programs."""
    found = shutil.which(name)
    if found:
        return [found]
    return program_argv(name)


def call_argv(service: str, env: Environment) -> list[str]:
    """How this program reaches dom0's service: directly in dom0, else through its agent."""
    if env.vchan_domain == 0:
        return [*_program("qrexec-client"), "-d", "dom0", f"DEFAULT:QUBESRPC {service} dom0"]
    return [*_program("qrexec-client-vm"), "--", "dom0", service]


def _error_classes() -> frozenset[str]:
    return ERROR_CLASS_NAMES


def call(env: Environment, method: str, name: str | None = None, payload: bytes = b"") -> bytes:
    """Run `method[+name]` in dom0 and return its stdout."""
    service = method if name is None else f"{method}+{name}"
    argv = call_argv(service, env)
    try:
        done = subprocess.run(argv, input=payload, capture_output=True, check=False)
    except OSError as err:
        raise CallFailed(127, argv, b"", str(err).encode()) from err
    if done.returncode == 0:
        return done.stdout
    kind, sep, message = done.stderr.decode("utf-8", "replace").partition(" ")
    if sep and kind in _error_classes():
        raise AdminError(kind, message)
    raise CallFailed(done.returncode, argv, done.stdout, done.stderr)


def _method(op: str, include: bool) -> str:
    return f"policy.include.{op}" if include else f"policy.{op}"


def list_names(env: Environment, include: bool = False) -> list[str]:
    out = call(env, _method("List", include)).decode("utf-8", "surrogateescape")
    return out.splitlines()


def get(env: Environment, name: str, include: bool = False) -> tuple[bytes, str]:
    """The file's content and its token."""
    out = call(env, _method("Get", include), name)
    token, _, content = out.partition(b"\n")
    return content, token.decode("ascii", "replace")


def replace(env: Environment, name: str, content: bytes, token: str = "any",
            include: bool = False) -> None:
    call(env, _method("Replace", include), name, token.encode("ascii") + b"\n" + content)


def remove(env: Environment, name: str, token: str = "any", include: bool = False) -> None:
    call(env, _method("Remove", include), name, token.encode("ascii"))
