"""Exit codes, EOF and streams (S13-S23), VM -> VM through real daemons and
agents; the caller's domain `work` is wiretapped where a scenario is about messages."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess

import pytest

from pyqrexec.protocol.messages import hello

from .fixtures.processes import QrexecHost, wait_for
from .fixtures.rawcalls import children, split_messages
from .fixtures.wiretap import (
    EXIT,
    HELLO,
    STDERR,
    STDIN,
    STDOUT,
    Connection,
    Message,
    Tap,
    tapped_world,
)
from .fixtures.world import NOBODY, World, write_exe
from .test_hostile_data_channel import as_caller, msg


@pytest.fixture
def world(host: QrexecHost) -> tuple[World, Tap]:
    """work (5, tapped) calls personal (6)."""
    w, tap = tapped_world(host)
    w.domain("personal", 6)
    return w, tap


def the_call(tap: Tap) -> Connection:
    """The one data channel of the test's call: work's qrexec-client-vm is its server, so
    `to_server` is what the caller received and `to_client` what it sent."""
    (conn,) = tap.data_connections()
    return tap.find(conn.port)


def summary(msgs: list[Message]) -> list[tuple[int, int]]:
    return [(m.type, len(m.payload)) for m in msgs]


def test_s13_local_versus_remote_status(world: tuple[World, Tap]) -> None:
    w, _ = world
    root = w.host.root
    w.service("personal", "test.Ok", "#!/bin/sh\ncat >/dev/null\nexit 0\n")
    w.service("personal", "test.Fail", "#!/bin/sh\ncat >/dev/null\nexit 42\n")
    local3 = write_exe(root / "local3", "#!/bin/sh\nexit 3\n")
    local0 = write_exe(root / "local0", "#!/bin/sh\nexit 0\n")
    assert w.call("work", "personal", "test.Ok", str(local3)).returncode == 3
    assert w.call("work", "personal", "test.Fail", str(local0)).returncode == 42


def test_s14_signal(world: tuple[World, Tap]) -> None:
    w, _ = world
    w.service("personal", "test.Kill", "#!/bin/sh\nkill -KILL $$\n")
    assert w.call("work", "personal", "test.Kill").returncode == 137


def test_s15_service_not_found(world: tuple[World, Tap]) -> None:
    w, tap = world
    r = w.call("work", "personal", "test.Missing", input=b"caller data\n" * 1000)
    assert r.returncode == 127
    got = summary(the_call(tap).to_server.messages())
    assert got[0] == (HELLO, 4)
    assert sorted(got[1:3]) == [(STDOUT, 0), (STDERR, 0)]
    assert got[3:] == [(EXIT, 4)]
    assert struct.unpack("<i", the_call(tap).to_server.messages()[3].payload) == (127,)


def test_s15_target_reads_none_of_the_callers_data(host: QrexecHost) -> None:
    """The caller's data, sent with its HELLO, is still unread when the target's handler
    closes: the caller sees the reset a socket gives when unread data is dropped, after the
    handler's three messages."""
    dom = World(host).domain("personal", 6)
    data = b"caller data\n" * 5000
    with as_caller(dom, b"root:QUBESRPC test.Missing+ work") as chan:
        chan.sendall(hello(4) + msg(STDIN, data[:60000]) + msg(STDIN, data[60000:]))
        got = split_messages(recv_until_reset(chan))
    assert got[0] == (HELLO, struct.pack("<I", 4))
    assert sorted(t for t, _ in got[1:3]) == [STDOUT, STDERR]
    assert got[3:] == [(EXIT, struct.pack("<i", 127))]


def recv_until_reset(sock: socket.socket) -> bytes:
    """Everything the peer sent; fails unless the connection then ends with a reset."""
    parts = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return b"".join(parts)
        assert chunk, f"clean EOF: the peer read everything; it sent {b''.join(parts)!r}"
        parts.append(chunk)


@pytest.mark.parametrize("content", ["#!/bin/sh\necho run\n", "\x7fELF junk junk\n"],
                         ids=["no-exec-bit", "junk"])
def test_s16_not_executable(host: QrexecHost, content: str) -> None:
    # a non-root agent execve()s the service directly
    # (docs/reference/services.md#starting-the-program)
    w = World(host)
    w.domain("work", 5)
    w.domain("personal", 6, user="nobody", agent_wrapper=NOBODY)
    path = w.service("personal", "test.Svc", content)
    if content.startswith("#!"):
        path.chmod(0o644)
    r = w.call("work", "personal", "test.Svc")
    assert r.returncode == 125
    assert r.stdout == b""


def test_s17_data_channel_lost(world: tuple[World, Tap]) -> None:
    w, _ = world
    started = w.host.root / "started"
    w.service("personal", "test.Hang", f"#!/bin/sh\ntouch {started}\nexec sleep 60\n")
    proc = w.start_call("work", "personal", "test.Hang", stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(started.exists, 20, "the service")
    agent = w.host.domains["personal"].agent
    assert agent is not None
    (handler,) = children(agent.pid)
    service = children(handler)
    os.kill(handler, signal.SIGKILL)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        for pid in service:
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 255, err
    assert b"vchan connection closed early" in err


def test_s17_handler_killed_by_its_own_service(world: tuple[World, Tap]) -> None:
    """The handler sends its HELLO before it starts anything (docs/reference/protocol.md#dom0-to-vm,
    step 6), so a handler gone the moment its service starts still leaves a channel closed early."""
    w, _ = world
    w.service("personal", "test.KillParent", "#!/bin/sh\nkill -KILL $PPID\nexec sleep 5\n")
    r = subprocess.run(w.call_argv("work", "personal", "test.KillParent"),
                       stdin=subprocess.DEVNULL, capture_output=True,
                       env=w.call_env("work"), timeout=60)
    assert r.returncode == 255, r.stderr
    assert b"vchan connection closed early" in r.stderr


def test_s18_stdin_eof_reaches_the_service(world: tuple[World, Tap]) -> None:
    w, tap = world
    marker = w.host.root / "saw-eof"
    w.service("personal", "test.Cat", f"#!/bin/sh\ncat\ntouch {marker}\n")
    with open(os.devnull, "rb") as null:
        r = subprocess.run(w.call_argv("work", "personal", "test.Cat"), stdin=null,
                           capture_output=True, env=w.call_env("work"), timeout=60)
    assert (r.returncode, r.stdout) == (0, b"")
    assert marker.exists()
    sent = summary(the_call(tap).to_client.messages())
    assert sent[:2] == [(HELLO, 4), (STDIN, 0)]


def test_s19_early_exit(host: QrexecHost) -> None:
    # the service side closes right after EXIT_CODE, so whether a later STDIN EOF still gets
    # through is a race the transport decides; the lingering tap keeps reading for it
    w, tap = tapped_world(host, linger=True)
    w.domain("personal", 6)
    w.service("personal", "test.Early", "#!/bin/sh\necho ok\nexit 0\n")
    with open("/dev/zero", "rb") as endless:
        r = subprocess.run(w.call_argv("work", "personal", "test.Early"), stdin=endless,
                           capture_output=True, env=w.call_env("work"), timeout=60)
    assert (r.returncode, r.stdout) == (0, b"ok\n")
    call = the_call(tap)
    (exit_msg,) = [m for m in call.to_server.messages() if m.type == EXIT]
    eofs = [m for m in call.to_client.messages() if (m.type, len(m.payload)) == (STDIN, 0)]
    assert len(eofs) == 1
    assert eofs[0].seq > exit_msg.seq


def test_s20_exit_code_is_last(world: tuple[World, Tap]) -> None:
    w, tap = world
    w.service("personal", "test.Bg", "#!/bin/sh\necho start\nsleep 2 &\nexit 0\n")
    r = w.call("work", "personal", "test.Bg", input=b"")
    assert (r.returncode, r.stdout) == (0, b"start\n")
    got = summary(the_call(tap).to_server.messages())
    assert got.index((STDOUT, 0)) < got.index((EXIT, 4)) == len(got) - 1


@pytest.mark.parametrize(("version", "limit"), [(4, 65536), (2, 4096)])
def test_s21_chunk_limits(host: QrexecHost, version: int, limit: int) -> None:
    w, tap = tapped_world(host)
    w.domain("personal", 6, agent_env={"QREXEC_MAX_PROTOCOL_VERSION": str(version)})
    w.service("personal", "test.Cat", "#!/bin/sh\nexec cat\n")
    data = os.urandom(1 << 20)
    r = w.call("work", "personal", "test.Cat", input=data)
    assert r.returncode == 0
    assert r.stdout == data
    call = the_call(tap)
    both = call.to_server.messages() + call.to_client.messages()
    assert call.to_server.messages()[0].payload == struct.pack("<I", version)
    assert max(len(m.payload) for m in both) <= limit
    sent = b"".join(m.payload for m in call.to_client.messages() if m.type == STDIN)
    assert sent == data
    if version == 4:
        # the limit is used, not just respected
        assert max(len(m.payload) for m in both) > 4096


def test_s22_prefix_data(host: QrexecHost) -> None:
    host.domain("work", 5).start()
    with open(os.devnull, "rb") as null:
        r = host.client("-d", "work", "-p", "abc", "DEFAULT:cat", stdin=null)
    assert (r.returncode, r.stdout) == (0, b"abc")


def test_s23_output_filtering(host: QrexecHost) -> None:
    w = World(host)
    w.domain("work", 5)
    w.service("work", "test.Esc", "#!/bin/sh\nprintf 'A\\033[31m\\n'\n")
    cmd = "DEFAULT:QUBESRPC test.Esc dom0"
    assert host.client("-d", "work", cmd).stdout == bytes.fromhex("41 1b 5b 33 31 6d 0a")
    assert host.client("-t", "-d", "work", cmd).stdout == b"A_[31m\n"
