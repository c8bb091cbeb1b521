"""A qrexec-host manager killed with SIGKILL takes every process it started with it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from pyqrexec.system.parent_death import dies_with_this_process

from .fixtures.host import SANDBOX_MODES, HostWorld
from .fixtures.processes import PYTHON, SRC

#: how long the processes of a killed manager may take to die
GRACE = 5.0


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of `pid`; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields follow the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every process below `root` in the parent tree: pid -> start time (tells a reused pid
    from the process recorded)."""
    children: dict[int, list[int]] = defaultdict(list)
    started: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        info = _stat(int(name))
        if info is not None:
            children[info[1]].append(int(name))
            started[int(name)] = info[2]
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in children[todo.pop()]:
            found[child] = started[child]
            todo.append(child)
    return found


def alive(pid: int, started: int) -> bool:
    """A zombie counts as dead: PID 1 here need not reap the orphans it inherits."""
    info = _stat(pid)
    return info is not None and info[0] != "Z" and info[2] == started


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


@pytest.mark.parametrize("sandbox", SANDBOX_MODES)
def test_sigkilled_manager_leaves_no_process(sandbox: str) -> None:
    world = HostWorld(sandbox).up()
    survivors: dict[int, int] = {}
    try:
        # vault's agent runs as nobody: its privilege drop must not lose the parent-death
        # signal; other's runs as root
        for name in ("vault", "other"):
            done = world.host("start", name)
            assert done.returncode == 0, done.stderr
        assert world.proc is not None
        procs = descendants(world.proc.pid)
        commands = "\n".join(cmdline(pid) for pid in procs)
        for module in ("qrexec_policy_daemon", "qrexec_daemon", "qrexec_agent"):
            assert f"pyqrexec.cli.{module} " in commands, commands
        assert commands.count("pyqrexec.cli.qrexec_agent ") >= 3, commands

        os.kill(world.proc.pid, signal.SIGKILL)
        world.proc.wait()
        deadline = time.monotonic() + GRACE
        while True:
            survivors = {pid: t for pid, t in procs.items() if alive(pid, t)}
            if not survivors or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not survivors, "survived the manager:\n" + "\n".join(
            f"{pid}: {cmdline(pid)}" for pid in survivors)
        # what they left behind does not stand in the way of the next manager
        world.up()
        done = world.host("call", "work", "vault", "test.Echo", input=b"again\n")
        assert done.returncode == 0 and done.stdout.endswith(b"again\n"), done.stderr
    finally:
        for pid, started in survivors.items():  # do not leave them to the next test
            if alive(pid, started):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        world.close()


def _child(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a Python child started to die with this process."""
    return subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": SRC},
                          preexec_fn=dies_with_this_process())


@pytest.mark.skipif(os.geteuid() != 0, reason="changing groups needs root")
def test_parent_death_signal_survives_a_group_change() -> None:
    """What the policy daemon does when it switches to group qubes."""
    code = ("import os; from pyqrexec.system.parent_death import *\n"
            "before = parent_death_signal()\n"
            "{switch}\n"
            "print(before, parent_death_signal())\n")
    kept = _child(code.format(switch="with keep_parent_death_signal(): os.setgid(65534)"))
    assert kept.stdout.split() == [str(int(signal.SIGKILL))] * 2, kept.stderr
    # without it the kernel forgets the signal: the case above is no accident
    lost = _child(code.format(switch="os.setgid(65534)"))
    assert lost.stdout.split() == [str(int(signal.SIGKILL)), "0"], lost.stderr


def test_child_whose_parent_is_gone_already_takes_the_signal() -> None:
    """The parent may end between the fork and the request: the request then comes too late
    to fire, so the child signals itself."""
    done = _child("import os, signal; from pyqrexec.system.parent_death import *\n"
                  "set_parent_death_signal(signal.SIGTERM, os.getppid() + 1)\n"
                  "print('still here')\n")
    assert done.returncode == -signal.SIGTERM and "still here" not in done.stdout
