"""Enforcing a domain's resource limits (docs/qrexec-host.md "Limits"): the backend chosen
once at start-up by `detect()` — a systemd scope, cgroups made by hand (v1, v2 or a hybrid of
both), or only RLIMIT_NPROC — and each domain's cgroup while it runs. What the limits are
and which controller files express them is the pure `limits.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .limits import (
    CONTROLLERS,
    DomainLimits,
    controller_files,
    inside_mount,
    own_cgroups,
    systemd_properties,
    tree_name,
    v1_mounts,
    v2_mount,
)

__all__ = [
    "Backend",
    "CgroupFs",
    "DomainCgroup",
    "NoCgroups",
    "Systemd",
    "detect",
    "join",
]


class DomainCgroup(Protocol):
    """One domain's limits while it runs."""

    #: put in front of the agent's argv (systemd-run); empty for the others
    prefix: list[str]
    #: `cgroup.procs` files another process of the domain joins (`qrexec-host call`);
    #: empty where there are none to write (systemd's scope, none)
    procs_files: list[str]

    def join_in_child(self) -> None:
        """In the forked child, before exec: system calls only (no locks of other threads)."""

    async def remove(self) -> None:
        """Kill what is left of the domain's processes; remove its cgroup."""


class Backend(Protocol):
    #: what `up` reports: `systemd`, `cgroup v1 (pids, memory, cpu)`, `none`
    name: str

    def create(self, domain: str, limits: DomainLimits) -> DomainCgroup: ...

    def close(self) -> None:
        """At shutdown, after every domain's `remove`."""


def detect(state_dir: Path, log: Callable[[str], None]) -> Backend:
    """The backend this host can use, chosen once; a `none` says so in one warning."""
    why: list[str] = []
    if os.path.isdir("/run/systemd/system"):
        systemd = Systemd.probe(state_dir)
        if isinstance(systemd, Systemd):
            return systemd
        why.append(systemd)
    else:
        why.append("systemd is not running")
    if os.geteuid() == 0:
        fs = CgroupFs.setup(state_dir, log)
        if isinstance(fs, CgroupFs):
            return fs
        why.append(fs)
    else:
        why.append("not root: cannot make cgroups")
    none = NoCgroups()
    log(f"no cgroups for domain limits ({'; '.join(why)}): domains run without memory and "
        "CPU limits; each agent gets only RLIMIT_NPROC = its max_processes, which counts "
        "every process of its account on this host and does not bind root")
    return none


class Systemd:
    """A transient scope per domain: `systemd-run --scope` execs the agent's command in it."""

    def __init__(self, state_dir: Path, user: bool) -> None:
        self.base = tree_name(state_dir)
        self.user = ["--user"] if user else []
        self.name = "systemd" + (" --user" if user else "")
        self.count = 0

    @classmethod
    def probe(cls, state_dir: Path) -> Systemd | str:
        exe = shutil.which("systemd-run")
        if exe is None:
            return "systemd-run not found"
        backend = cls(state_dir, user=os.geteuid() != 0)
        try:
            done = subprocess.run(
                [exe, *backend.user, "--scope", "--quiet", "--collect", "-p", "TasksMax=16",
                 "--", "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"systemd-run failed: {err}"
        if done.returncode != 0:
            text = done.stderr.decode(errors="replace").strip().splitlines()
            return f"systemd-run failed: {text[-1] if text else done.returncode}"
        return backend

    def create(self, domain: str, limits: DomainLimits) -> DomainCgroup:
        # unit names differ per start: a scope killed by the OOM killer may linger a moment
        self.count += 1
        unit = f"{self.base}-{domain}-{self.count}.scope"
        prefix = ["systemd-run", *self.user, "--scope", "--quiet", "--collect",
                  "--slice=qrexec.slice", f"--unit={unit}"]
        for prop in systemd_properties(limits):
            prefix += ["-p", prop]
        return _Scope([*prefix, "--"], unit, self.user)

    def close(self) -> None:
        pass


class _Scope:
    def __init__(self, prefix: list[str], unit: str, user: list[str]) -> None:
        self.prefix = prefix
        self.procs_files: list[str] = []
        self.unit = unit
        self.user = user

    def join_in_child(self) -> None:
        pass

    async def remove(self) -> None:
        # an empty scope ends by itself (and --collect unloads it, failed or not)
        with contextlib.suppress(OSError):
            proc = await asyncio.create_subprocess_exec(
                "systemctl", *self.user, "kill", "--signal=SIGKILL", self.unit,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            await proc.wait()


class CgroupFs:
    """cgroups made directly: `TREE/DOMAIN` per controller, TREE = `tree_name(state)`.

    On v1 TREE sits in the manager's own cgroup of each hierarchy (whatever bounds the
    manager bounds its domains too). On v2 a controller can be enabled for children only in
    a cgroup without processes, and the manager's own has the manager: TREE sits at the
    root of the cgroup2 mount, the one exempt from that rule.
    """

    def __init__(self, tree: str, places: dict[str, tuple[int, Path]]) -> None:
        #: controller -> (cgroup version, TREE directory)
        self.places = places
        self.tree = tree
        used = ", ".join(c for c in CONTROLLERS if c in places)
        versions = sorted({v for v, _ in places.values()})
        self.name = f"cgroup v{'+v'.join(map(str, versions))} ({used})"

    @classmethod
    def setup(cls, state_dir: Path, log: Callable[[str], None]) -> CgroupFs | str:
        """Find each controller, clear a tree an earlier host on this state directory left
        (killed outright), make the tree; a description of the failure instead."""
        try:
            with open("/proc/self/mountinfo", encoding="utf-8") as f:
                mountinfo = f.read()
            with open("/proc/self/cgroup", encoding="utf-8") as f:
                own = own_cgroups(f.read())
        except OSError as err:
            return f"cannot read the cgroup mounts: {err}"
        tree = tree_name(state_dir)
        places: dict[str, tuple[int, Path]] = {}
        problems: list[str] = []
        v2 = v2_mount(mountinfo)
        if v2 is not None:
            places.update(_setup_v2(v2[0], tree, problems))
        v1 = v1_mounts(mountinfo)
        for controller in CONTROLLERS:
            if controller in places or controller not in v1 or controller not in own:
                continue
            mount, root = v1[controller]
            parent = inside_mount(mount, root, own[controller])
            if parent is None:
                continue
            try:
                _clear_tree(parent / tree)
                (parent / tree).mkdir(exist_ok=True)
            except OSError as err:
                problems.append(f"{controller} (v1): {err.strerror}")
                continue
            places[controller] = (1, parent / tree)
        if "pids" not in places:
            return "no usable pids controller" + (f" ({'; '.join(problems)})"
                                                  if problems else "")
        missing = [c for c in CONTROLLERS if c not in places]
        if missing:
            log(f"no cgroup controller {', '.join(missing)}: those limits are not enforced")
        return cls(tree, places)

    def create(self, domain: str, limits: DomainLimits) -> DomainCgroup:
        dirs: dict[Path, None] = {}
        try:
            for controller in CONTROLLERS:
                if controller not in self.places:
                    continue
                version, tree = self.places[controller]
                path = tree / domain
                if path not in dirs:
                    if path.is_dir():  # left by a stop that could not empty it: start afresh
                        _kill_and_remove(path, time.sleep)
                    path.mkdir()
                    dirs[path] = None
                for name, value, required in controller_files(controller, version, limits):
                    try:
                        _write(path / name, value)
                    except FileNotFoundError:
                        if required:
                            raise
        except OSError:
            for path in dirs:  # nothing has joined them yet
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise
        return _Cgroup(list(dirs))

    def close(self) -> None:
        for _, tree in self.places.values():
            with contextlib.suppress(OSError):
                tree.rmdir()


def _setup_v2(mount: Path, tree: str, problems: list[str]) -> dict[str, tuple[int, Path]]:
    try:
        available = (mount / "cgroup.controllers").read_text().split()
    except OSError as err:
        problems.append(f"cgroup2: {err.strerror}")
        return {}
    wanted = [c for c in CONTROLLERS if c in available]
    if not wanted:
        return {}
    try:
        _clear_tree(mount / tree)
        for c in wanted:
            _write(mount / "cgroup.subtree_control", f"+{c}")
        (mount / tree).mkdir(exist_ok=True)
        _write(mount / tree / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
    except OSError as err:
        problems.append(f"cgroup2: {err.strerror}")
        with contextlib.suppress(OSError):
            (mount / tree).rmdir()
        return {}
    return {c: (2, mount / tree) for c in wanted}


class _Cgroup:
    def __init__(self, dirs: list[Path]) -> None:
        self.prefix: list[str] = []
        self.dirs = dirs
        self.procs_files = [str(d / "cgroup.procs") for d in dirs]
        # encoded here: the child only makes system calls
        self._procs = [os.fsencode(p) for p in self.procs_files]

    def join_in_child(self) -> None:
        join(self._procs)

    async def remove(self) -> None:
        for path in self.dirs:
            await _kill_and_remove_async(path)


def join(procs_files: list[bytes] | list[str]) -> None:
    """Move this process into the cgroups whose `cgroup.procs` files are given."""
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")  # "0" = the writing process
        finally:
            os.close(fd)


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _kill_round(path: Path) -> bool:
    """One pass: SIGKILL everything in `path` and below; True once it is all gone."""
    if not path.is_dir():
        return True
    children = [c for c in path.iterdir() if c.is_dir()]
    done = all([_kill_round(c) for c in children])
    kill = path / "cgroup.kill"
    if kill.exists():  # v2: the kernel kills the whole subtree, forks in flight included
        with contextlib.suppress(OSError):
            _write(kill, "1")
    # v1 has no cgroup.kill: processes forked between the read and the kill are found in the
    # next pass, and the pids limit bounds how many there can be
    for pid in _pids(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        path.rmdir()
    except FileNotFoundError:
        return done
    except OSError as err:
        if err.errno != errno.EBUSY:
            raise
        return False
    return done


#: how long a removal waits for killed processes to leave (rounds of 10 ms)
_KILL_ROUNDS = 500


def _kill_and_remove(path: Path, sleep: Callable[[float], None]) -> None:
    for _ in range(_KILL_ROUNDS):
        if _kill_round(path):
            return
        sleep(0.01)
    raise OSError(errno.EBUSY, f"cannot empty cgroup {path}")


async def _kill_and_remove_async(path: Path) -> None:
    for _ in range(_KILL_ROUNDS):
        if _kill_round(path):
            return
        await asyncio.sleep(0.01)
    raise OSError(errno.EBUSY, f"cannot empty cgroup {path}")


def _clear_tree(tree: Path) -> None:
    """A tree an earlier host left: its domains' processes are killed, the cgroups go."""
    if tree.is_dir():
        _kill_and_remove(tree, time.sleep)


class NoCgroups:
    """Nothing can be made: RLIMIT_NPROC is all there is.

    It is checked at fork against the number of processes of the forking process's real
    user, host-wide: it bounds a domain whose agent runs as its own `user`, shares that
    bound with everything else of the same account (two domains running as `nobody` share
    one), and does nothing for root (the kernel exempts it) until a root agent switches to
    another user for a call. Memory and CPU stay unbounded.
    """

    name = "none"

    def create(self, domain: str, limits: DomainLimits) -> DomainCgroup:
        return _Rlimit(limits.max_processes)

    def close(self) -> None:
        pass


class _Rlimit:
    def __init__(self, nproc: int) -> None:
        self.prefix: list[str] = []
        self.procs_files: list[str] = []
        self.nproc = nproc

    def join_in_child(self) -> None:
        resource.setrlimit(resource.RLIMIT_NPROC, (self.nproc, self.nproc))

    async def remove(self) -> None:
        pass

