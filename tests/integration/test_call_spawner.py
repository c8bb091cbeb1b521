"""The agent's call spawner (docs/architecture.md#the-call-spawner): calls run in processes
the spawner forked, mostly spares forked ahead of their call; a spare holds nothing of the
agent's; a killed spare or spawner costs no call; and neither outlives the agent."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from pyqrexec.system.spawner import SPARE_NAME, SPAWNER_NAME

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


def _spare(spawner: int) -> int:
    """The spare waiting under `spawner` (waits for the one forked after the last call)."""
    found: list[int] = []

    def waiting() -> bool:
        found[:] = [c for c in direct_children(spawner) if process_name(c) == SPARE_NAME]
        return len(found) == 1

    wait_for(waiting, 10, "a spare")
    return found[0]


def _handler_of_call(host: QrexecHost) -> int:
    """The pid of the process that ran a call (the service's parent)."""
    r = host.client("-d", "work", "root:echo $PPID")
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def test_calls_run_in_spares_the_spawner_forked_ahead(host: QrexecHost, work: Domain) -> None:
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    spare = _spare(spawner)
    handler = _handler_of_call(host)
    # the call ran in the spare that waited, and the spawner has forked the next one
    assert handler == spare
    assert parent_pid(handler) in (spawner, 0)
    assert _spare(spawner) != spare
    # the spare took back the agent's name for the call
    assert process_name(_spawner(work.agent.pid)) == SPAWNER_NAME


def test_a_spare_holds_nothing_of_the_agent(host: QrexecHost, work: Domain) -> None:
    assert work.agent is not None
    spare = _spare(_spawner(work.agent.pid))
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{spare}/fd"))
    # stdin, stdout, stderr and its socket to the spawner: no control channel, no trigger
    # socket, no listener of the agent's
    assert len(fds) == 4 and fds[:3] == [0, 1, 2], fds
    assert os.readlink(f"/proc/{spare}/fd/{fds[3]}").startswith("socket:")
    agent_sockets = {os.readlink(f"/proc/{work.agent.pid}/fd/{fd}")
                     for fd in os.listdir(f"/proc/{work.agent.pid}/fd")}
    assert os.readlink(f"/proc/{spare}/fd/{fds[3]}") not in agent_sockets


def test_a_killed_spare_costs_no_call(host: QrexecHost, work: Domain) -> None:
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    spare = _spare(spawner)
    os.kill(spare, signal.SIGKILL)
    wait_for(lambda: process_gone(spare), 10, "the spare to die")
    for _ in range(3):
        handler = _handler_of_call(host)
        assert handler != spare
    assert _spare(spawner) != spare


def test_without_its_spawner_the_agent_forks_calls_itself(host: QrexecHost,
                                                           work: Domain) -> None:
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    spare = _spare(spawner)
    os.kill(spawner, signal.SIGKILL)
    wait_for(lambda: "the call spawner exited with -9" in work.agent_log.read_text(), 10,
             "the agent to notice")
    # the spare sees its spawner's socket close and exits without running anything
    wait_for(lambda: process_gone(spare), 10, "the spare to exit")
    r = host.client("-d", "work", "root:echo $PPID; cat", input=b"still served\n")
    assert r.returncode == 0, r.stderr
    handler, echoed = r.stdout.split(b"\n", 1)
    assert echoed == b"still served\n"
    assert parent_pid(int(handler)) in (work.agent.pid, 0)


def test_spawner_and_spare_end_with_the_agent(host: QrexecHost, work: Domain) -> None:
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    spare = _spare(spawner)
    work.agent.kill()
    work.agent.wait()
    wait_for(lambda: process_gone(spawner) and process_gone(spare), 10,
             "the spawner and the spare to exit")


def test_a_call_in_flight_outlives_its_spawner(host: QrexecHost, work: Domain,
                                               tmp_path: Path) -> None:
    """Killing the spawner ends no call it started; the daemon still learns of the end."""
    assert work.agent is not None
    spawner = _spawner(work.agent.pid)
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    os.chmod(tmp_path, 0o755)
    proc = host_client_popen(host, f"root:cat {fifo}")
    with open(fifo, "wb") as hold:
        os.kill(spawner, signal.SIGKILL)
        wait_for(lambda: process_gone(spawner), 10, "the spawner to die")
        hold.write(b"done\n")
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, b"done\n")
    assert host.client("-d", "work", "root:true").returncode == 0


def host_client_popen(host: QrexecHost, cmdline: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*program("qrexec-client"), f"--socket-dir={host.socket_dir}", "-d", "work", cmdline],
        env=host.env(0), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
