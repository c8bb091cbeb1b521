"""The agent's call spawner (docs/architecture.md#the-call-spawner): calls run in worker
processes the spawner forked ahead of them, which serve call after call while a call leaves
nothing behind; an idle worker holds nothing of the agent's; a call that changes its process
or leaves a child ends its worker; a killed worker or spawner costs no call; and neither
outlives the agent."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from pyqrexec.system.spawner import MAX_IDLE, SPARE_NAME, SPAWNER_NAME
from tests.descriptors import open_fds

from .fixtures.processes import (
    Domain,
    QrexecHost,
    parent_pid,
    process_gone,
    program,
    wait_for,
)
from .fixtures.rawcalls import direct_children, process_name


def _spawner(agent: int) -> int:
    (spawner,) = [c for c in direct_children(agent) if process_name(c) == SPAWNER_NAME]
    return spawner


def _idle(spawner: int, count: int | None = None) -> list[int]:
    """The workers waiting under `spawner`, once there are `count` of them (default: any)."""
    found: list[int] = []

    def waiting() -> bool:
        found[:] = [c for c in direct_children(spawner) if process_name(c) == SPARE_NAME]
        return len(found) == count if count is not None else bool(found)

    wait_for(waiting, 10, f"{count or 'an'} idle worker(s)")
    return found


def _call(host: QrexecHost, script: str = "echo $PPID") -> tuple[int, bytes]:
    """(the pid of the process that handled a call: the service's parent, the rest of the
    output) of a root call running `script`."""
    r = host.client("-d", "work", f"root:{script}")
    assert r.returncode == 0, r.stderr
    handler, _, rest = r.stdout.partition(b"\n")
    return int(handler), rest


def test_a_worker_forked_ahead_serves_call_after_call(host: QrexecHost, work: Domain) -> None:
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    (first,) = _idle(spawner, 1)
    calls = [_call(host, "echo $PPID; cat /proc/$PPID/comm") for _ in range(5)]
    # the worker that waited took the first call; while it ran the spawner forked another;
    # from then on the most recently idle worker takes each call: no fork per call
    assert [handler for handler, _ in calls] == [first] * 5
    assert parent_pid(first) == spawner
    assert first in _idle(spawner, 2)
    # a worker takes the agent's name while it handles a call, the spare's while it waits
    assert {name for _, name in calls} == {process_name(work.agent.pid) + b"\n"}


def test_only_the_spawner_waits_its_turn(host: QrexecHost, work: Domain) -> None:
    """The spawner is SCHED_BATCH: woken by the agent, it waits until the agent sleeps,
    instead of preempting it and pushing the worker it wakes onto the caller's CPU
    (docs/architecture.md#the-call-spawner). Its workers, and the services they start, are
    scheduled as usual."""
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    assert os.sched_getscheduler(spawner) == os.SCHED_BATCH
    handler, rest = _call(host, "echo $PPID; chrt -p $$")
    assert os.sched_getscheduler(handler) == os.SCHED_OTHER
    assert b"SCHED_OTHER" in rest, rest
    for worker in _idle(spawner, 2):
        assert os.sched_getscheduler(worker) == os.SCHED_OTHER
    assert os.sched_getscheduler(work.agent.pid) == os.SCHED_OTHER


def test_an_idle_worker_holds_nothing_of_the_agent(host: QrexecHost, work: Domain) -> None:
    assert work.agent is not None
    _call(host)
    for worker in _idle(_spawner(work.agent.pid), 2):
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{worker}/fd"))
        # stdin, stdout, stderr and its socket to the spawner: no control channel, no
        # trigger socket, no listener of the agent's, nothing of the call it served
        assert len(fds) == 4 and fds[:3] == [0, 1, 2], fds
        assert os.readlink(f"/proc/{worker}/fd/{fds[3]}").startswith("socket:")
        # (the agent may close a call's descriptor while it is listed)
        assert os.readlink(f"/proc/{worker}/fd/{fds[3]}") not in open_fds(
            work.agent.pid).values()
        # a root call's shell ran in root's home: the worker went back where the agent is
        assert os.readlink(f"/proc/{worker}/cwd") == os.readlink(f"/proc/{work.agent.pid}/cwd")


def test_a_call_that_leaves_a_child_ends_its_worker(host: QrexecHost, work: Domain) -> None:
    """A just-exec command stays a child of the process that started it. That worker exits
    rather than serve again, so the command goes on as after a per-call process: handed to
    init; and the next call gets a clean worker."""
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    assert host.client("-e", "-d", "work", "root:exec sleep 31.5").returncode == 0
    found: list[str] = []

    def logged() -> bool:
        found[:] = re.findall(r"executed \(nowait\): root:exec sleep 31.5 \(pid (\d+)\)\n"
                              r".*call handled by pid (\d+) ended with 0",
                              work.agent_log.read_text())
        return bool(found)

    wait_for(logged, 10, "the just-exec call to end")
    child, handler = (int(pid) for pid in found[0])
    try:
        wait_for(lambda: process_gone(handler), 10, "its worker to exit")
        assert not process_gone(child)
        assert _call(host)[0] != handler
    finally:
        os.kill(child, signal.SIGKILL)
    assert len(_idle(spawner)) <= MAX_IDLE


def test_a_killed_idle_worker_costs_no_call(host: QrexecHost, work: Domain) -> None:
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    _call(host)
    idle = _idle(spawner, 2)
    for worker in idle:
        os.kill(worker, signal.SIGKILL)
    wait_for(lambda: all(process_gone(w) for w in idle), 10, "the workers to die")
    for _ in range(3):
        assert _call(host)[0] not in idle
    assert "killed by signal 9" in work.agent_log.read_text()


def test_without_its_spawner_the_agent_forks_calls_itself(host: QrexecHost,
                                                           work: Domain) -> None:
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    idle = _idle(spawner)
    os.kill(spawner, signal.SIGKILL)
    wait_for(lambda: "the call spawner exited with -9" in work.agent_log.read_text(), 10,
             "the agent to notice")
    # an idle worker sees its spawner's socket close and exits without running anything
    wait_for(lambda: all(process_gone(w) for w in idle), 10, "the idle workers to exit")
    r = host.client("-d", "work", "root:echo $PPID; cat", input=b"still served\n")
    assert r.returncode == 0, r.stderr
    handler, echoed = r.stdout.split(b"\n", 1)
    assert echoed == b"still served\n"
    assert parent_pid(int(handler)) in (work.agent.pid, 0)


def test_spawner_and_workers_end_with_the_agent(host: QrexecHost, work: Domain) -> None:
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    _call(host)
    idle = _idle(spawner, 2)
    work.agent.kill()
    work.agent.wait()
    wait_for(lambda: all(process_gone(p) for p in (spawner, *idle)), 10,
             "the spawner and the workers to exit")


def test_a_call_in_flight_outlives_its_spawner(host: QrexecHost, work: Domain,
                                               tmp_path: Path) -> None:
    """Killing the spawner ends no call it started; the daemon still learns of the end."""
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    os.chmod(tmp_path, 0o755)
    proc = subprocess.Popen(
        [*program("qrexec-client"), f"--socket-dir={host.socket_dir}", "-d", "work",
         f"root:cat {fifo}"],
        env=host.env(0), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    with open(fifo, "wb") as hold:
        os.kill(spawner, signal.SIGKILL)
        wait_for(lambda: process_gone(spawner), 10, "the spawner to die")
        hold.write(b"done\n")
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, b"done\n")
    assert host.client("-d", "work", "root:true").returncode == 0
