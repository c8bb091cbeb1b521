"""VM -> VM and VM -> dom0 calls through real daemons and agents
(docs/reference/protocol.md#vm-to-vm, docs/reference/protocol.md#vm-to-dom0)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pyqrexec.api import CallRefused

from .fixtures.world import World, write_exe


def test_readme_howto_test_add(world: World) -> None:
    root = world.host.root
    server = write_exe(root / "our_test_add_server",
                       "#!/bin/sh\nread arg1 arg2\necho $(($arg1+$arg2))\n")
    world.service("anotherVM", "test.Add", f"#!/bin/sh\nexec {server}\n")
    client = write_exe(root / "our_test_add_client",
                       "#!/bin/sh\necho $1 $2\nexec cat >&$SAVED_FD_1\n")
    r = world.call("work", "anotherVM", "test.Add", str(client), "11", "22")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"33\n"


def test_stdin_stdout_and_status(world: World) -> None:
    world.service("anotherVM", "test.Echo",
                  "#!/bin/sh\necho \"$QREXEC_REMOTE_DOMAIN $QREXEC_SERVICE_FULL_NAME\"\n"
                  "tr a-z A-Z\necho err >&2\nexit 3\n")
    r = world.call("work", "anotherVM", "test.Echo+arg", input=b"hello\n")
    assert r.returncode == 3
    assert r.stdout == b"work test.Echo+arg\nHELLO\n"
    assert r.stderr == b"err\n"


def test_refused(world: World) -> None:
    r = world.call("work", "deny-me", "test.Echo")
    assert r.returncode == 126
    assert r.stderr == b"Request refused\n"


def test_service_not_found(world: World) -> None:
    r = world.call("work", "anotherVM", "test.Missing")
    assert r.returncode == 127


def test_target_not_running(world: World) -> None:
    r = world.call("work", "halted", "test.Echo")
    assert r.returncode == 126


def test_local_program_status(world: World) -> None:
    world.service("anotherVM", "test.True", "#!/bin/sh\ncat >/dev/null\n")
    prog = write_exe(world.host.root / "local", "#!/bin/sh\necho data\nexit 4\n")
    r = world.call("work", "anotherVM", "test.True", str(prog))
    assert r.returncode == 4


def test_vm_to_dom0(world: World) -> None:
    world.service("dom0", "test.Dom0",
                  "#!/bin/sh\necho \"from $QREXEC_REMOTE_DOMAIN to $QREXEC_REQUESTED_TARGET"
                  " ($QREXEC_REQUESTED_TARGET_TYPE)\"\ncat\nexit 5\n")
    r = world.call("work", "dom0", "test.Dom0", input=b"payload\n")
    assert r.returncode == 5, r.stderr
    assert r.stdout == b"from work to dom0 (name)\npayload\n"
    r = world.call("work", "@adminvm", "test.Dom0", input=b"")
    assert r.returncode == 5


def test_many_calls_do_not_leak(world: World) -> None:
    world.service("anotherVM", "test.True", "#!/bin/sh\nexit 0\n")
    work = world.host.domains["work"]
    other = world.host.domains["anotherVM"]
    procs = [p for p in (work.agent, work.daemon, other.agent, other.daemon) if p is not None]
    from .fixtures.processes import wait_for
    from .fixtures.rawcalls import children
    from .fixtures.world import fd_count

    def callers_connected() -> int:
        """Connections to work's trigger socket the agent still holds (/proc/net/unix lists
        an accepted socket under its listener's path; state 03 is connected)."""
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
        return sum(1 for line in lines
                   if line.split()[-1] == work.agent_socket and line.split()[5] == "03")

    def settled() -> list[int]:
        # a client may end before the callee's agent has reaped its handler (and closed the
        # handler's pidfd), and before the caller's agent has seen its trigger connection
        # close: count once every per-call process and connection is gone
        wait_for(lambda: not any(children(p.pid) for p in procs), what="handlers reaped")
        wait_for(lambda: callers_connected() == 0, what="callers' connections closed")
        # an agent closes a call's pipe when its loop reads the EOF the call process left
        # on it, which may be just after that process went back to waiting
        # (docs/architecture.md#the-call-spawner): count once the counts have held a while
        counts = [fd_count(p.pid) for p in procs]
        for _ in range(50):
            time.sleep(0.2)
            again = [fd_count(p.pid) for p in procs]
            if again == counts:
                break
            counts = again
        return counts

    assert world.call("work", "anotherVM", "test.True").returncode == 0
    before = settled()
    # 20 allowed and 20 refused calls: two of each by qrexec-client-vm, the others by the
    # client library (the same bytes, without an interpreter start each)
    for _ in range(2):
        assert world.call("work", "anotherVM", "test.True").returncode == 0
        assert world.call("work", "deny-me", "test.True").returncode == 126
    with world.library("work") as qrexec:
        for _ in range(18):
            assert qrexec.call("anotherVM", "test.True", timeout=60).returncode == 0
            with pytest.raises(CallRefused):
                qrexec.call("deny-me", "test.True", timeout=60)
    assert settled() == before


def test_wait_for_session_runs_first(world: World) -> None:
    marker = world.host.root / "session-up"
    world.service("anotherVM", "qubes.WaitForSession",
                  f"#!/bin/sh\nread user\nsleep 0.3\necho \"$user\" > {marker}\n")
    world.service("anotherVM", "test.Session", f"#!/bin/sh\ncat {marker}\n")
    config = world.host.root / "anotherVM" / "rpc-config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "test.Session").write_text("wait-for-session = 1\n")
    r = world.call("work", "anotherVM", "test.Session")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"root\n"


def test_single_socket_mode_service_side(world: World) -> None:
    # after SIGUSR1 the handler reads the service's stdin socket as its output
    # (docs/reference/protocol.md#single-socket-mode)
    world.service("anotherVM", "test.Single",
                  "#!/bin/sh\nkill -USR1 $QREXEC_AGENT_PID\nsleep 0.3\n"
                  "exec >&-\nread line <&0\necho \"got $line\" >&0\n")
    r = world.call("work", "anotherVM", "test.Single", input=b"ping\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"got ping\n"


def test_single_socket_mode_local_program(world: World) -> None:
    world.service("anotherVM", "test.Cat", "#!/bin/sh\nexec cat\n")
    prog = write_exe(world.host.root / "single-local",
                     "#!/bin/sh\nkill -USR1 $QREXEC_AGENT_PID\nsleep 0.3\nexec >&-\n"
                     "echo hello >&0\nread reply <&0\necho \"$reply\" >&$SAVED_FD_1\n")
    r = world.call("work", "anotherVM", "test.Cat", str(prog))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello\n"


def test_use_stdin_socket(world: World) -> None:
    from .fixtures.processes import program, run_on_stdin_socket

    world.service("anotherVM", "test.Upper", "#!/bin/sh\ntr a-z A-Z\n")
    dom = world.host.domains["work"]
    status, data = run_on_stdin_socket(
        [*program("qrexec-client-vm"), "-a", dom.agent_socket, "--use-stdin-socket",
         "anotherVM", "test.Upper"], world.host.env(dom.domid), b"both ways")
    assert status == 0
    assert data == b"BOTH WAYS"
    r = world.call("work", "--use-stdin-socket", "anotherVM", "test.Upper", input=b"")
    assert r.returncode == 2
