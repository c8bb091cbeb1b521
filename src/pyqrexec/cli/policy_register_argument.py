"""policy.RegisterArgument: the dom0 service registering a service argument
(docs/reference/cli.md#policyregisterargument).

A backend qube (QREXEC_REMOTE_DOMAIN) registers the argument on stdin of service
QREXEC_SERVICE_ARGUMENT for the frontend qube it named as the call's target
(QREXEC_REQUESTED_TARGET): it appends `SERVICE +ARG FRONTEND BACKEND allow` to
`60-registered-arguments.policy` in the policy directory. Refusals exit 1, write nothing and are
logged to `policy-register.log` in QREXEC_LOG_DIR (ext; default /var/log/qubes).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Mapping
from typing import BinaryIO

from ..policy import loaders
from ..policy.errors import AccessDenied
from ..policy.loaders import DiskFiles, load_policy
from ..policy.registration import (
    MAX_ARGUMENT_LENGTH,
    REGISTERED_FILE,
    Registration,
    RegistrationRefused,
    already_registered,
    check_argument,
    make_registration,
    policy_dirs,
)
from ..system.environment import Environment
from . import entry

__all__ = ["main", "run", "DEFAULT_LOG_DIR", "LOG_NAME"]

DEFAULT_LOG_DIR = "/var/log/qubes"
LOG_NAME = "policy-register.log"


class _Log:
    """One line per outcome in the register log (and on stderr, the daemon's log)."""

    def __init__(self, env: Mapping[str, str], what: str) -> None:
        self.path = os.path.join(env.get("QREXEC_LOG_DIR", DEFAULT_LOG_DIR), LOG_NAME)
        self.what = what

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.what}: {message}\n"
        sys.stderr.write(line)
        try:
            with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(line)
        except OSError as err:
            # a missing log directory must not turn a refusal into something else
            sys.stderr.write(f"policy.RegisterArgument: cannot write {self.path}: {err}\n")


def _printable(text: str | bytes | None) -> str:
    if text is None:
        return "(unset)"
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="backslashreplace")
    return "".join(c if c.isprintable() and c != "\\" else ascii(c)[1:-1] for c in text)


def _read_argument(stdin: BinaryIO) -> bytes:
    # one byte past the limit tells "too long" apart without reading what a hostile caller
    # might send forever
    return stdin.read(MAX_ARGUMENT_LENGTH + 1)


def _lock(policy_dir: str) -> int:
    """An exclusive flock on the policy directory, the lock the policy Admin API takes too."""
    fd = os.open(policy_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        raise
    return fd


def _append(policy_dir: str, registration: Registration) -> None:
    path = os.path.join(policy_dir, REGISTERED_FILE)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o664)
    try:
        data = registration.line.encode()
        size = os.fstat(fd).st_size
        # an administrator's edit may have left the last line open; appending to it would
        # change that rule instead of adding one
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _register(env: Mapping[str, str], registration: Registration, log: _Log) -> int:
    environment = Environment(env)
    policy_dir = environment.persistent_policy_dir
    try:
        lock = _lock(policy_dir)
    except OSError as err:
        log(f"refused: cannot lock the policy directory {policy_dir}: {err.strerror}")
        return 1
    try:
        # read at call time: the runtime directory is the loaders' to say
        dirs = policy_dirs(loaders.DEFAULT_POLICY_DIRS[0], policy_dir)
        try:
            policy = load_policy(DiskFiles(), dirs, environment.legacy_policy_dir).policy
        except AccessDenied as err:
            log(f"refused: cannot load the policy: {err}")
            return 1
        if already_registered(policy, registration):
            log("refused: argument already registered")
            return 1
        try:
            _append(policy_dir, registration)
        except OSError as err:
            log(f"failed: cannot write {REGISTERED_FILE}: {err.strerror}")
            return 1
    finally:
        os.close(lock)
    log(f"registered: {registration.line.strip()}")
    return 0


def main(env: Mapping[str, str] | None = None, stdin: BinaryIO | None = None) -> int:
    env = os.environ if env is None else env
    data = _read_argument(sys.stdin.buffer if stdin is None else stdin)
    service = env.get("QREXEC_SERVICE_ARGUMENT")
    frontend = env.get("QREXEC_REQUESTED_TARGET")
    backend = env.get("QREXEC_REMOTE_DOMAIN")
    log = _Log(env, f"{_printable(backend)} -> {_printable(frontend)}: "
                    f"{_printable(service)} +{_printable(data)}")
    try:
        registration = make_registration(service, check_argument(data), frontend, backend)
    except RegistrationRefused as err:
        log(f"refused: {err}")
        return 1
    return _register(env, registration, log)


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
