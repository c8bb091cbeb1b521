"""End-to-end calls with real daemons and agents (S4-S6, S9, S12).

S1-S3 need the ask dialog, S7/S8/S10 the host manager; S11 (port parity) is
test_daemon_socket.py::test_parity_rule_and_release.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import struct
from pathlib import Path

import pytest

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import parse_exec
from pyqrexec.system.spawner import SPAWNER_NAME

from .fixtures.processes import QrexecHost, parent_pid, wait_for
from .fixtures.rawcalls import process_name, raw_dom0_exec
from .fixtures.wiretap import EXIT, HELLO, STDERR, STDOUT, Tap, tapped_domain, tapped_world
from .fixtures.world import World


@pytest.fixture
def work(host: QrexecHost) -> tuple[World, Tap]:
    return tapped_world(host)


def exit_code(payload: bytes) -> int:
    return int(struct.unpack("<i", payload)[0])


def test_s4_dom0_runs_a_command(host: QrexecHost, work: tuple[World, Tap]) -> None:
    world, tap = work
    work_domain = world.host.domains["work"]
    r = host.client("-d", "work", "DEFAULT:echo hello")
    assert (r.returncode, r.stdout) == (0, b"hello\n")
    data = tap.find(513, server=0, client=5)
    # the agent's handler is the vchan client of vchan.0.5.513: dom0 got port 513 for domain 5
    assert [m.type for m in data.to_server.messages()][-1] == EXIT
    control = tap.control()
    wait_for(lambda: any(m.type == MsgType.CONNECTION_TERMINATED
                         for m in control.to_client.messages()), 10, "CONNECTION_TERMINATED")
    to_agent = control.to_server.messages()
    from_agent = control.to_client.messages()
    execs = [parse_exec(m.payload) for m in to_agent if m.type == MsgType.EXEC_CMDLINE]
    assert [(e.connect_domain, e.connect_port, e.payload) for e in execs] == [
        (0, 513, b"root:echo hello\0")]
    assert [m.payload for m in from_agent if m.type == MsgType.CONNECTION_TERMINATED] == [
        struct.pack("<II", 0, 513)]
    # port 513 is free again: the next call gets it; byte by byte, EXEC_CMDLINE{0, 0} is
    # answered with {5, 513}
    raw = raw_dom0_exec(work_domain, b"DEFAULT:echo hello")
    assert (raw.port, raw.stream(STDOUT), raw.exit_code) == (513, b"hello\n", 0)
    assert len([c for c in tap.data_connections() if c.port == 513]) == 2


def test_s5_remote_exit_status(host: QrexecHost, work: tuple[World, Tap]) -> None:
    assert host.client("-d", "work", "DEFAULT:exit 42").returncode == 42
    assert host.client("-E", "-d", "work", "DEFAULT:exit 42").returncode == 0


def _release(fifo: Path) -> bool:
    """Write a line into `fifo` once a reader has it open (False: none yet)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ENXIO:
            return False
        raise
    try:
        os.write(fd, b"go\n")
    finally:
        os.close(fd)
    return True


def test_s6_just_exec(host: QrexecHost, work: tuple[World, Tap]) -> None:
    _, tap = work
    marker = host.root / "x"
    # the command waits on a FIFO the test holds: -e returns while it still runs
    fifo = host.root / "go"
    os.mkfifo(fifo)
    r = host.client("-e", "-d", "work", f"DEFAULT:read x < {fifo}; touch {marker}",
                    timeout=30)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    first = tap.find(513, server=0, client=5)
    r = host.client("-e", "-d", "work", "DEFAULT:QUBESRPC no.Such dom0")
    assert r.returncode == 127
    second = [c for c in tap.data_connections() if c is not first]
    assert len(second) == 1
    tap.find(second[0].port)
    for conn, status in ((first, 0), (second[0], 127)):
        msgs = conn.to_server.messages()
        assert [m.type for m in msgs] == [HELLO, EXIT]
        assert exit_code(msgs[1].payload) == status
    wait_for(lambda: _release(fifo), 15, "the just-exec command to wait on its FIFO")
    wait_for(marker.exists, 15, "the just-exec command")


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not _have("pyqrexec.call.dom0_service"),
                    reason="VM -> dom0 calls need pyqrexec.call.dom0_service (not merged yet)")
def test_s9_vm_to_dom0_with_keyword_target(host: QrexecHost, work: tuple[World, Tap]) -> None:
    world, tap = work
    world.service("dom0", "test.Env", "#!/bin/sh\nenv\n")
    r = world.call("work", "@adminvm", "test.Env")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    for expected in ("QREXEC_REMOTE_DOMAIN=work", "QREXEC_SERVICE_FULL_NAME=test.Env+",
                     "QREXEC_SERVICE_ARGUMENT=", "QREXEC_REQUESTED_TARGET_TYPE=keyword",
                     "QREXEC_REQUESTED_TARGET_KEYWORD=adminvm"):
        assert expected in lines
    assert not any(line.startswith("QREXEC_REQUESTED_TARGET=") for line in lines)
    # work's qrexec-client-vm is the vchan server, dom0's service side the client
    (conn,) = tap.data_connections()
    msgs = tap.find(conn.port).to_server.messages()
    assert (msgs[1].type, len(msgs[1].payload)) == (STDERR, 0)

    r = world.call("work", "dom0", "test.Env")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert "QREXEC_REQUESTED_TARGET_TYPE=name" in lines
    assert "QREXEC_REQUESTED_TARGET=dom0" in lines


def test_s12_direct_vm_to_vm_data_path(host: QrexecHost) -> None:
    world = World(host)
    work = world.domain("work", 5)
    personal, tap = tapped_domain(world, "personal", 6)
    world.service("personal", "test.Cat", "#!/bin/sh\nexec cat\n")
    r = world.call("work", "personal", "test.Cat", input=b"direct\n")
    assert (r.returncode, r.stdout) == (0, b"direct\n")
    conn = tap.find(513)
    assert conn.name == "vchan.5.6.513.sock"
    # personal's daemon allocated 513 for peer 5 and told personal's agent
    execs = [parse_exec(m.payload) for m in tap.control().to_server.messages()
             if m.type == MsgType.EXEC_CMDLINE]
    assert [(e.connect_domain, e.connect_port) for e in execs] == [(5, 513)]
    assert execs[0].payload == b"root:QUBESRPC test.Cat+ work\0"
    # personal's handler (a child of its agent's call spawner) connected; the listener was
    # none of the dom0 processes
    assert personal.agent is not None
    assert process_name(conn.client_ppid) == SPAWNER_NAME
    assert parent_pid(conn.client_ppid) == personal.agent.pid
    dom0 = {p.pid for d in (work, personal) for p in (d.daemon,) if p is not None}
    assert conn.server_pid not in dom0 | {work.agent.pid if work.agent else 0}
    assert [c.name for c in tap.data_connections()] == ["vchan.5.6.513.sock"]
