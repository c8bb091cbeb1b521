"""Reading policy from files (docs/reference/policy.md#file-order,
docs/reference/policy.md#directives, docs/reference/policy.md#compat-mode,
docs/reference/policy.md#reloading).

The one module of the package that touches the filesystem, and only through `Files`:
`DiskFiles` for the real thing, `MemoryFiles` for tests and tools that hold text in memory.
`load_policy` follows directives and legacy files; `PolicyWatch` tells whether anything a loaded
policy depends on has changed since.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..system import defaults
from .errors import PolicyLoadError, PolicySyntaxError
from .legacy import LegacyInclude, compat_order, synthetic_denies, translate_line
from .parser import Directive, Policy, Rule, parse_line, split_lines

__all__ = [
    "DEFAULT_POLICY_DIRS",
    "DEFAULT_LEGACY_DIR",
    "MAX_INCLUDE_DEPTH",
    "Files",
    "DiskFiles",
    "MemoryFiles",
    "OverlayFiles",
    "LoadResult",
    "load_policy",
    "PolicyWatch",
]

# the same defaults every program uses (docs/reference/cli.md#common-environment)
DEFAULT_POLICY_DIRS = defaults.POLICY_DIRS
DEFAULT_LEGACY_DIR = defaults.LEGACY_POLICY_DIR
MAX_INCLUDE_DEPTH = 32
_POLICY_NAME_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz_.-")
# Timestamps come from a coarse clock: a file modified this close to when it was read may be
# modified again without any visible change of its stat data, so its content is compared.
_RACY_NS = 100_000_000


class Files(Protocol):
    def resolve(self, path: str) -> str: ...
    def is_file(self, path: str) -> bool: ...
    def is_dir(self, path: str) -> bool: ...
    def list_dir(self, path: str) -> list[str]: ...
    def read_bytes(self, path: str) -> bytes: ...


class DiskFiles:
    """The real filesystem; remembers the content of files read while still "racy"."""

    def __init__(self) -> None:
        self.started_ns = time.time_ns()
        # What the policy depends on, for `PolicyWatch`: files opened or probed, dirs listed.
        self.read: set[str] = set()
        self.listed: set[str] = set()
        self.racy: dict[str, tuple[int, bytes]] = {}

    def resolve(self, path: str) -> str:
        self.read.add(path)  # what it resolves to depends on the symlinks on the way
        return os.path.realpath(path)

    def is_file(self, path: str) -> bool:
        self.read.add(path)
        return os.path.isfile(path)

    def is_dir(self, path: str) -> bool:
        self.read.add(path)
        return os.path.isdir(path)

    def list_dir(self, path: str) -> list[str]:
        self.listed.add(path)
        return os.listdir(path)

    def read_bytes(self, path: str) -> bytes:
        self.read.add(path)
        with open(path, "rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime_ns
            data = f.read()
        if mtime >= self.started_ns - _RACY_NS:
            self.racy[path] = (mtime, data)
        return data


class MemoryFiles:
    """Files held in a mapping `{absolute path: content}`; `dirs` adds empty directories."""

    def __init__(self, files: Mapping[str, str | bytes], dirs: Iterable[str] = ()) -> None:
        self.files = {posixpath.normpath(p): c for p, c in files.items()}
        self.dirs = {posixpath.normpath(d) for d in dirs}
        for path in self.files:
            parent = posixpath.dirname(path)
            while parent not in self.dirs:
                self.dirs.add(parent)
                parent = posixpath.dirname(parent)

    def resolve(self, path: str) -> str:
        return posixpath.normpath(path)

    def is_file(self, path: str) -> bool:
        return path in self.files

    def is_dir(self, path: str) -> bool:
        return path in self.dirs

    def list_dir(self, path: str) -> list[str]:
        if path not in self.dirs:
            raise FileNotFoundError(2, "No such file or directory", path)
        return [
            posixpath.basename(p)
            for p in (*self.files, *self.dirs)
            if p != path and posixpath.dirname(p) == path
        ]

    def read_bytes(self, path: str) -> bytes:
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        content = self.files[path]
        return content.encode() if isinstance(content, str) else content


class OverlayFiles:
    """`base` as it would be with `changes` applied: `{path: new content, or None = removed}`.

    Lets a change be validated before it is written (the policy Admin API).
    """

    def __init__(self, base: Files, changes: Mapping[str, bytes | None]) -> None:
        self.base = base
        self.changes = {base.resolve(p): c for p, c in changes.items()}
        self.removed = frozenset(p for p, c in self.changes.items() if c is None)

    def resolve(self, path: str) -> str:
        return self.base.resolve(path)

    def is_file(self, path: str) -> bool:
        key = self.base.resolve(path)
        if key in self.changes:
            return self.changes[key] is not None
        return self.base.is_file(path)

    def is_dir(self, path: str) -> bool:
        return self.base.is_dir(path)

    def list_dir(self, path: str) -> list[str]:
        names = [
            n
            for n in self.base.list_dir(path)
            if self.base.resolve(posixpath.join(path, n)) not in self.removed
        ]
        here = self.base.resolve(path)
        for key, content in self.changes.items():
            name = posixpath.basename(key)
            if content is not None and posixpath.dirname(key) == here and name not in names:
                names.append(name)
        return names

    def read_bytes(self, path: str) -> bytes:
        key = self.base.resolve(path)
        if key not in self.changes:
            return self.base.read_bytes(path)
        content = self.changes[key]
        if content is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        return content


@dataclass
class LoadResult:
    policy: Policy
    messages: list[tuple[str, str]] = field(default_factory=list)  # (level, text)


class _Loader:
    def __init__(self, files: Files, legacy_dir: str, removed: Collection[str] = (),
                 compat: bool = True) -> None:
        self.files = files
        self.legacy_dir = legacy_dir
        self.removed = removed
        self.follow_compat = compat
        self.rules: list[Rule] = []
        self.messages: list[tuple[str, str]] = []

    def _lines(self, path: str) -> list[str]:
        try:
            data = self.files.read_bytes(path)
        except OSError as err:
            raise PolicyLoadError(f"failed to load {path} file: {err}") from err
        return split_lines(data, path)

    def select(self, directory: str) -> list[str]:
        """Paths of the `*.policy` regular files of `directory`, sorted
        (docs/reference/policy.md#file-order steps 2–3)."""
        try:
            names = self.files.list_dir(directory)
        except OSError as err:
            raise PolicyLoadError(f"failed to load {directory} file: {err}") from err
        chosen = []
        for name in names:
            path = posixpath.join(directory, name)
            if name.startswith(".") or not name.endswith(".policy"):
                continue
            if not self.files.is_file(path):
                continue
            if not set(name) <= _POLICY_NAME_CHARS:
                raise PolicyLoadError(f"invalid filename: {path}")
            chosen.append(name)
        return [posixpath.join(directory, name) for name in sorted(chosen)]

    def load_dirs(self, dirs: Sequence[str]) -> None:
        existing = [d for d in dirs if self.files.is_dir(d)]
        # legacy-only host: the policy is "!compat-4.0"
        # (docs/reference/policy.md#how-legacy-files-are-read)
        if not existing:
            if self.follow_compat:
                self.compat(())
            return
        by_name: dict[str, str] = {}
        for directory in existing:
            for path in self.select(directory):
                by_name.setdefault(posixpath.basename(path), path)
        for name in sorted(by_name):
            path = by_name[name]
            self.policy_file(path, posixpath.dirname(path), (self.files.resolve(path),))

    def policy_file(self, path: str, top: str, stack: tuple[str, ...]) -> None:
        for lineno, text in enumerate(self._lines(path), 1):
            item = parse_line(text, path, lineno)
            if isinstance(item, Rule):
                self.rules.append(item)
            elif item is not None:
                self.directive(item, top, stack)

    def _included(self, path: str, base: str, d: Directive | LegacyInclude, want_dir: bool) -> str:
        full = self.files.resolve(posixpath.join(base, path))
        if full in self.removed:
            message = f"including a file that will be removed: {full}"
            raise PolicySyntaxError(d.file, d.line, message)
        if want_dir and not self.files.is_dir(full):
            raise PolicySyntaxError(d.file, d.line, f"not a directory: {full}")
        if not want_dir and not self.files.is_file(full):
            raise PolicySyntaxError(d.file, d.line, f"not a file: {full}")
        return full

    def _enter(
        self, path: str, d: Directive | LegacyInclude, stack: tuple[str, ...]
    ) -> tuple[str, ...]:
        if path in stack:
            raise PolicySyntaxError(d.file, d.line, f"include loop: {path}")
        if len(stack) > MAX_INCLUDE_DEPTH:
            raise PolicySyntaxError(d.file, d.line, "include nesting too deep")
        return (*stack, path)

    def directive(self, d: Directive, top: str, stack: tuple[str, ...]) -> None:
        if d.name == "!compat-4.0":
            if not self.follow_compat:
                return
            self.messages.append(
                (
                    "warning",
                    f"warning: !compat-4.0 directive in file {d.file} line {d.line} "
                    "is transitional and will be deprecated",
                )
            )
            self.compat(stack)
        elif d.name == "!include-dir":
            directory = self._included(d.params[0], top, d, want_dir=True)
            for path in self.select(directory):
                self.policy_file(path, top, self._enter(self.files.resolve(path), d, stack))
        elif d.name == "!include":
            path = self._included(d.params[0], top, d, want_dir=False)
            self.policy_file(path, top, self._enter(path, d, stack))
        else:  # !include-service
            service, argument, name = d.params
            path = self._included(name, top, d, want_dir=False)
            self.legacy_file(path, service, argument, top, self._enter(path, d, stack))

    def legacy_file(
        self, path: str, service: str, argument: str, base: str, stack: tuple[str, ...]
    ) -> None:
        for lineno, text in enumerate(self._lines(path), 1):
            item = translate_line(text, path, lineno, service, argument)
            if isinstance(item, Rule):
                self.rules.append(item)
            elif item is not None:
                included = self._included(item.path, base, item, want_dir=False)
                self.legacy_file(
                    included, service, argument, base, self._enter(included, item, stack)
                )

    def compat(self, stack: tuple[str, ...]) -> None:
        """Include every legacy file at this point (docs/reference/policy.md#compat-mode)."""
        directory = self.legacy_dir
        try:
            names = self.files.list_dir(directory) if self.files.is_dir(directory) else []
        except OSError as err:
            raise PolicyLoadError(f"failed to load {directory} file: {err}") from err
        names = [n for n in names if self.files.is_file(posixpath.join(directory, n))]
        legacy, skipped = compat_order(names)
        for name in skipped:
            self.messages.append(("info", f"skipping legacy policy file {name!r}"))
        for f in legacy:
            path = self.files.resolve(posixpath.join(directory, f.name))
            self.legacy_file(path, f.service, f.argument, directory, (*stack, path))
            if f.argument != "*":
                self.rules.extend(synthetic_denies(f.service, f.argument, path))


def load_policy(
    files: Files,
    policy_dirs: Sequence[str],
    legacy_dir: str = DEFAULT_LEGACY_DIR,
    removed: Collection[str] = (),
    *,
    compat: bool = True,
) -> LoadResult:
    """Load the whole policy; raises `PolicySyntaxError` or `PolicyLoadError`.

    Including one of the resolved paths `removed` is a syntax error (a change about to
    remove it must not leave a dangling include). `compat=False` ignores `!compat-4.0`
    (qrexec-legacy-convert's view of the policy without the legacy files).
    """
    loader = _Loader(files, legacy_dir, removed, compat)
    loader.load_dirs(policy_dirs)
    return LoadResult(Policy(loader.rules), loader.messages)


_Stat = tuple[int, int, int, int, int] | None


def _signature(st: os.stat_result) -> _Stat:
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stat(path: str) -> _Stat:
    try:
        return _signature(os.stat(path))
    except OSError:
        return None


def _walk(directory: str, out: dict[str, _Stat]) -> None:
    """Every entry under `directory` with its stat data (symlinks followed, not recursed)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        out[directory] = None
        return
    out[directory] = (0, 0, 0, 0, 0)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _walk(entry.path, out)
        else:
            try:
                out[entry.path] = _signature(entry.stat())
            except OSError:
                out[entry.path] = None


class PolicyWatch:
    """Tells whether the files and directories a loaded policy depends on changed
    (docs/reference/policy.md#reloading).

    Compares names, inodes, sizes and timestamps of every entry under the directories and of
    every file read, and the content of files modified too close to the load to trust
    their timestamps.
    """

    def __init__(self, dirs: Sequence[str], files: DiskFiles) -> None:
        self.dirs = sorted({*dirs, *files.listed})
        self.read = sorted(files.read)
        self.racy = dict(files.racy)
        self.state = self._state()

    def _state(self) -> dict[str, _Stat]:
        out: dict[str, _Stat] = {}
        for directory in self.dirs:
            _walk(directory, out)
        for path in self.read:
            if path not in out:
                out[path] = _stat(path)
        return out

    def changed(self) -> bool:
        if self._state() != self.state:
            return True
        now = time.time_ns()
        for path, (mtime, data) in list(self.racy.items()):
            try:
                with open(path, "rb") as f:
                    if f.read() != data:
                        return True
            except OSError:
                return True
            if mtime < now - _RACY_NS:
                del self.racy[path]
        return False

    def close(self) -> None:
        """Nothing to release (the same interface as the inotify watch)."""
