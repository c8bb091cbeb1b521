"""The policy directory as the Admin API changes it: lock, read, validate, write atomically.

What a request means and whether a change is acceptable is decided by `pyqrexec.policy.admin`;
this module does the filesystem work around it (docs/reference/cli.md#qubes-policy-admin).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import tempfile
from collections.abc import Iterator

from ..policy.admin import (
    Op,
    PolicyAdminFileNotFoundException,
    PolicyAdminInvalidFilePathException,
    Request,
    check_file_name,
    check_service,
    check_token,
    compute_token,
    files_for_service,
    listing,
    split_replace_payload,
    validate_change,
)
from ..policy.loaders import DiskFiles, load_policy

__all__ = ["PolicyDirectory", "FILE_MODE"]

FILE_MODE = 0o664
_POLICY_SUFFIX = ".policy"


class PolicyDirectory:
    def __init__(self, policy_dir: str, legacy_dir: str) -> None:
        self.policy_dir = policy_dir
        self.legacy_dir = legacy_dir

    def handle(self, request: Request) -> bytes:
        """The method's output; raises a `PolicyAdminException` for the caller."""
        with self._locked():
            return self._dispatch(request)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.policy_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _dispatch(self, request: Request) -> bytes:
        method, arg = request.method, request.argument
        if method.op is Op.GET_FILES:
            return self._get_files(arg)
        directory = self._directory(method.include)
        suffix = "" if method.include else _POLICY_SUFFIX
        if method.op is Op.LIST:
            return listing(_regular_files(directory), suffix)
        path = self._path(arg, directory, suffix)
        if method.op is Op.GET:
            content = _read(path)
            if content is None:
                raise PolicyAdminFileNotFoundException(f"Not found: {path}")
            return compute_token(content) + b"\n" + content
        if method.op is Op.REPLACE:
            token, content = split_replace_payload(request.payload)
            check_token(token, _read(path))
            validate_change(DiskFiles(), self.policy_dir, self.legacy_dir, path, content)
            os.makedirs(directory, exist_ok=True)  # the first include file creates include/
            _write_atomically(path, content)
            return b""
        check_token(request.payload, _read(path))  # Remove: the token before the file's existence
        if not os.path.isfile(path):
            raise PolicyAdminFileNotFoundException(f"Not found: {path}")
        validate_change(DiskFiles(), self.policy_dir, self.legacy_dir, path, None)
        os.unlink(path)
        return b""

    def _directory(self, include: bool) -> str:
        return os.path.join(self.policy_dir, "include") if include else self.policy_dir

    def _path(self, name: str, directory: str, suffix: str) -> str:
        """The file's resolved path, which must lie directly in `directory`."""
        check_file_name(name)
        path = os.path.realpath(os.path.join(directory, name + suffix))
        if os.path.dirname(path) != os.path.realpath(directory):
            raise PolicyAdminInvalidFilePathException(f"Expecting a path inside {directory}")
        return path

    def _get_files(self, service: str) -> bytes:
        check_service(service)
        rules = load_policy(DiskFiles(), [self.policy_dir], self.legacy_dir).policy.rules
        dirs = (self.policy_dir, os.path.realpath(self.policy_dir))
        return files_for_service(rules, service, dirs)


def _regular_files(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:  # no include/ yet: nothing to list
        return []
    return [n for n in names if os.path.isfile(os.path.join(directory, n))]


def _read(path: str) -> bytes | None:
    """The content of regular file `path`, None when there is none."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def _qubes_gid() -> int:
    try:
        return grp.getgrnam("qubes").gr_gid
    except KeyError:
        return -1  # chown leaves the group as it is


def _write_atomically(path: str, content: bytes) -> None:
    """Readers (the policy daemon) see the old file or the new one, never a partial one.

    The temporary name starts with `!` and does not end in `.policy`, so a policy load that
    happens meanwhile ignores it.
    """
    directory, name = os.path.split(path)
    fd, temp = tempfile.mkstemp(prefix=f"!{name}", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            with contextlib.suppress(PermissionError):  # not root: keep our own owner
                os.fchown(f.fileno(), 0, _qubes_gid())
            os.fsync(f.fileno())
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
