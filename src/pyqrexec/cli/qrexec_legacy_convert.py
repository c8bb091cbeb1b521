"""qrexec-legacy-convert: turn the legacy per-service policy files into policy.d files
(docs/reference/cli.md#qrexec-legacy-convert).

The plan comes from `policy.legacy_convert`; this module does the file work, compares the
policy graphs before and after, and can put every file back as it was.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field

from ..policy.errors import AccessDenied, SystemInfoError
from ..policy.graph import GraphOptions
from ..policy.legacy_convert import new_text, plan
from ..policy.system_info import SystemInfo
from ..policy_daemon.snapshot import graph_lines, load_dir, system_info_from_qubesd
from ..system.environment import Environment
from . import entry

__all__ = ["main", "run"]

_PROG = "qrexec-legacy-convert"


def _unused(path: str, suffix: str) -> str:
    """`path` + `suffix`, the suffix repeated until nothing has that name."""
    candidate = path + suffix
    while os.path.lexists(candidate):
        candidate += suffix
    return candidate


@dataclass
class _Changes:
    """What the conversion did to the disk, to undo it on request."""

    written: list[tuple[str, str | None]] = field(default_factory=list)  # (file, its backup)
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (legacy file, new name)

    def write(self, path: str, text: str) -> None:
        backup = None
        if os.path.lexists(path):
            backup = _unused(path, ".bak")
            shutil.copy2(path, backup)
        self.written.append((path, backup))
        print(f"Writing {path}...")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    def retire(self, legacy_dir: str) -> None:
        """Step 5: every legacy file gets the `.rpmsave` suffix, converted or not."""
        try:
            names = sorted(os.listdir(legacy_dir))
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(legacy_dir, name)
            if name.endswith(".rpmsave") or not os.path.isfile(path):
                continue
            new = _unused(path, ".rpmsave")
            os.rename(path, new)
            self.renamed.append((path, new))

    def undo(self) -> None:
        for old, new in reversed(self.renamed):
            os.rename(new, old)
        for path, backup in reversed(self.written):
            if backup is None:
                os.unlink(path)
            else:
                os.replace(backup, path)


def _graph(policy_dir: str, env: Environment, info: SystemInfo) -> list[str]:
    return graph_lines(policy_dir, env, info, GraphOptions(full_output=True))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _convert(policy_dir: str, env: Environment, changes: _Changes) -> None:
    """Steps 2–5; raises `AccessDenied` (policy does not load) or `OSError`."""
    print("Converting old policy files into new format files....")
    with_compat = load_dir(policy_dir, env)
    without_compat = load_dir(policy_dir, env, compat=False)
    for name, rules in plan(with_compat, without_compat).items():
        path = os.path.join(policy_dir, name + ".policy")
        changes.write(path, new_text(name, rules, _read(path)))
    changes.retire(env.legacy_policy_dir)


def _differences(before: list[str], after: list[str]) -> bool:
    """Step 6's report; True when the two states differ."""
    old, new = set(before), set(after)
    if old == new:
        return False
    print("ERROR: Found the following differences between previous and converted policy states:")
    print("OLD STATE")
    for line in before:
        if line not in new:
            print(line)
    print("NEW STATE")
    for line in after:
        if line not in old:
            print(line)
    return True


def _wants_restore() -> bool:
    try:
        answer = input("Do you want to restore initial state? [Y/n] ")
    except EOFError:  # nobody to answer: take the default
        print()
        answer = ""
    return answer not in ("n", "N")


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog=_PROG, description="Convert legacy Qubes 4.0 policy files"
    ).parse_args(argv)
    env = Environment.current()
    policy_dir = env.persistent_policy_dir
    print("Initiating policy conversion process...")
    try:
        info = system_info_from_qubesd(env)
        before = _graph(policy_dir, env, info)
    except SystemInfoError as err:
        print(f"{_PROG}: error getting system info: {err}", file=sys.stderr)
        return 1
    except AccessDenied as err:
        print(f"{_PROG}: error loading policy: {err}", file=sys.stderr)
        return 1
    changes = _Changes()
    try:
        _convert(policy_dir, env, changes)
    except (AccessDenied, OSError) as err:
        print(f"{_PROG}: conversion failed, nothing changed: {err}", file=sys.stderr)
        changes.undo()
        return 1
    try:
        after = _graph(policy_dir, env, info)
    except AccessDenied as err:  # counts as a difference: every old line is missing
        print(f"{_PROG}: error loading the converted policy: {err}", file=sys.stderr)
        after = []
    if _differences(before, after) and _wants_restore():
        changes.undo()
        print("Conversion reverted.")
        return 1
    print("Successfully converted old policy to new format.")
    return 0


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
