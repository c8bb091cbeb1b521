"""The limits backends on this machine's kernel: cgroups made, joined, emptied, removed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqrexec.host.cgroups import Backend, CgroupFs, NoCgroups, detect
from pyqrexec.host.limits import DomainLimits

from .fixtures.processes import SRC

LIMITS = DomainLimits(max_processes=20, memory=64 << 20, cpu_weight=50)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[CgroupFs]:
    said: list[str] = []
    found: Backend = detect(tmp_path / "state", said.append)
    if not isinstance(found, CgroupFs):
        pytest.skip(f"no cgroups to make here: {said}")
    try:
        yield found
    finally:
        found.close()


def sleeper(preexec: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], preexec_fn=preexec)  # type: ignore[arg-type]


def test_a_domain_cgroup_carries_the_limits_and_takes_the_child(backend: CgroupFs) -> None:
    cg = backend.create("t", LIMITS)
    dirs = {c: tree / "t" for c, (_, tree) in backend.places.items()}
    version = backend.places["pids"][0]
    assert (dirs["pids"] / "pids.max").read_text().strip() == "20"
    if "memory" in dirs:
        name = "memory.max" if version == 2 else "memory.limit_in_bytes"
        assert int((dirs["memory"] / name).read_text()) == 64 << 20
    if "cpu" in dirs:
        name, value = ("cpu.weight", "50") if version == 2 else ("cpu.shares", "512")
        assert (dirs["cpu"] / name).read_text().strip() == value
    child = sleeper(cg.join_in_child)
    try:
        for d in dirs.values():
            assert str(child.pid) in (d / "cgroup.procs").read_text().split()
        asyncio.run(cg.remove())
        assert child.wait(10) == -9
        assert not any(d.exists() for d in dirs.values())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    backend.close()
    assert not any(tree.exists() for _, tree in backend.places.values())


def test_a_limit_the_kernel_refuses_leaves_no_cgroup(backend: CgroupFs) -> None:
    with pytest.raises(OSError):
        backend.create("t", DomainLimits(max_processes=5 << 20))
    assert not any((tree / "t").exists() for _, tree in backend.places.values())


def test_up_clears_the_tree_a_killed_host_left(tmp_path: Path, backend: CgroupFs) -> None:
    cg = backend.create("t", LIMITS)
    child = sleeper(cg.join_in_child)
    try:
        # a host on the same state directory (the earlier one was killed outright)
        again = detect(tmp_path / "state", lambda line: None)
        assert isinstance(again, CgroupFs) and again.places == backend.places
        assert child.wait(10) == -9
        assert not any((tree / "t").exists() for _, tree in backend.places.values())
        assert all(tree.is_dir() for _, tree in backend.places.values())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_no_cgroups_leaves_rlimit_nproc(tmp_path: Path) -> None:
    cg = NoCgroups().create("t", LIMITS)
    child = sleeper(cg.join_in_child)
    try:
        limits = Path(f"/proc/{child.pid}/limits").read_text().splitlines()
        line = next(x for x in limits if x.startswith("Max processes"))
        assert line.split()[2:4] == ["20", "20"]
    finally:
        child.kill()
        child.wait()
    asyncio.run(cg.remove())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_without_root_nor_systemd_up_says_what_is_not_limited(tmp_path: Path) -> None:
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs here")
    code = ("import sys; from pathlib import Path; from pyqrexec.host.cgroups import detect; "
            "b = detect(Path(sys.argv[1]), print); print('backend', b.name)")
    done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           sys.executable, "-c", code, str(tmp_path / "state")],
                          capture_output=True, text=True, env={"PYTHONPATH": SRC}, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "backend none"
    assert lines[0].startswith("no cgroups for domain limits (systemd is not running; "
                               "not root: cannot make cgroups): domains run without memory "
                               "and CPU limits"), lines
