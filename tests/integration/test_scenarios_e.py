"""Hostile input from a domain (S48, S49, S50, S52, S53, S57, S58, S59's answered
ident, S60, S61) and "refusals and failures never leak".

S50-S56 (S50, S52 and S53 as seen by the policy are here) and the rest of S59 are
test_hostile_agent.py and test_daemon_socket.py. Here the daemon's policy is a recorder on
QREXEC_POLICY_SOCKET (or a recording policy program) so the tests see exactly what reaches it.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import hello, pack_exec, pack_header

from .fixtures.hostile import (
    RawClient,
    read_until_eof,
    refused,
    start_attacked_daemon,
    wait_exit,
    wait_log,
)
from .fixtures.processes import QrexecHost, program, wait_for
from .fixtures.rawcalls import (
    PolicyRecorder,
    data_handshake,
    raw_dom0_exec,
    raw_vm_call,
    split_messages,
)
from .fixtures.wiretap import tapped_domain, tapped_world
from .fixtures.world import World, fd_count, write_exe
from .test_daemon_socket import BAD_REQUESTS
from .test_hostile_agent import raw3, raw4, trigger

IDENT = b"SOCKET7".ljust(32, b"\0")


@pytest.fixture
def recorder(host: QrexecHost) -> Iterator[PolicyRecorder]:
    r = PolicyRecorder(host.root / "policy.sock")
    yield r
    r.close()


def attacked(host: QrexecHost, recorder: PolicyRecorder, version: int = 4):  # type: ignore[no-untyped-def]
    return start_attacked_daemon(host, version, env={"QREXEC_POLICY_SOCKET": recorder.path})


# -- S48, S49: names reach the policy sanitized ----------------------------------------------
@pytest.mark.parametrize(
    ("service", "target", "service_and_arg", "intended_target"),
    [
        (b"../../bin/sh+a/b", b"../etc", ".._.._bin_sh+a_b", ".._etc"),
        (b"a b;$x", b"vault", "a_b__x", "vault"),
        (b"test.Svc", b"$dispvm", "test.Svc", "_dispvm"),
        (b"caf\xc3\xa9+\xff", b"v\x80m", "caf__+_", "v_m"),
        (b"test.Svc+`id`|&<>*?!\\'\"", b"a\tb", "test.Svc+_id___________", "a_b"),
    ],
    ids=["slash-dotdot", "space-dollar", "dollar-target", "non-ascii", "shell"],
)
def test_s48_s49_names_reach_policy_sanitized(host: QrexecHost, recorder: PolicyRecorder,
                                               service: bytes, target: bytes,
                                               service_and_arg: str,
                                               intended_target: str) -> None:
    dom, agent = attacked(host, recorder)
    agent.send(raw4(name=service + b"\0", target=target, ident=IDENT))
    assert agent.recv(40) == refused(IDENT)
    (request,) = recorder.wait(1)
    assert request == {"source": "vm", "requested_source": "",
                       "intended_target": intended_target, "service_and_arg": service_and_arg}
    assert dom.daemon is not None and dom.daemon.poll() is None


def test_s48_policy_program_arguments(host: QrexecHost) -> None:
    """The fallback policy program gets the same sanitized names as separate arguments."""
    args = host.root / "policy-args"
    prog = write_exe(host.root / "policy-program",
                     f"#!/bin/sh\nprintf '%s\\0' \"$@\" >> {args}\necho result=deny\n")
    dom, agent = start_attacked_daemon(
        host, 4, env={"QREXEC_POLICY_SOCKET": str(host.root / "none.sock")},
        extra=[f"--policy-program={prog}"])
    agent.send(raw4(name=b"../../bin/sh+a/b\0", target=b"../etc", ident=IDENT))
    assert agent.recv(40) == refused(IDENT)
    agent.send(raw4(name=b"a b;$x\0", target=b"$dispvm", ident=IDENT))
    assert agent.recv(40) == refused(IDENT)
    assert args.read_bytes().split(b"\0")[:-1] == [
        b"--", b"vm", b".._etc", b".._.._bin_sh+a_b",
        b"--", b"vm", b"_dispvm", b"a_b__x",
    ]


# -- S50, S52, S53: refused or fatal before any policy call -----------------------------------
@pytest.mark.parametrize(("version", "name"), [
    *((v, n) for v in (2, 3, 4) for n in (b"\0", b"+\0", b"+a\0")),
    (2, b"\0a"),
], ids=lambda v: repr(v))
def test_s50_empty_and_plus_names(host: QrexecHost, recorder: PolicyRecorder, version: int,
                                  name: bytes) -> None:
    """S50: service "", "+", "+a" (and for v2 also "\\0a") are refused with the sent ident,
    and the policy is never asked; a valid name after them is."""
    dom, agent = attacked(host, recorder, version)
    agent.send(trigger(version, name, IDENT))
    assert agent.recv(40) == refused(IDENT)
    agent.send(trigger(version, b"test.Valid\0", IDENT))
    assert agent.recv(40) == refused(IDENT)  # the recorder's answer is deny
    (request,) = recorder.wait(1)
    assert request["service_and_arg"] == "test.Valid"
    assert len(recorder.requests) == 1


@pytest.mark.parametrize("ident", [b"SOCKET1!".ljust(32, b"\0"),
                                   b"SOCKET1\0X".ljust(32, b"\0"), b"SOCKET1" + b"9" * 25],
                         ids=["invalid-byte", "after-terminator", "no-nul"])
def test_s52_bad_idents(host: QrexecHost, recorder: PolicyRecorder, ident: bytes) -> None:
    """S52: a bad ident is refused with the 32 bytes as received and never reaches the
    policy; an empty ident (32 NULs) is accepted and does."""
    dom, agent = attacked(host, recorder)
    agent.send(raw4(name=b"test.Bad\0", target=b"vault", ident=ident))
    assert agent.recv(40) == refused(ident)
    empty = bytes(32)
    agent.send(raw4(name=b"test.Empty\0", target=b"vault", ident=empty))
    assert agent.recv(40) == refused(empty)  # the recorder's answer is deny
    (request,) = recorder.wait(1)
    assert request["service_and_arg"] == "test.Empty"
    assert len(recorder.requests) == 1
    assert dom.daemon is not None and dom.daemon.poll() is None


@pytest.mark.parametrize("message", [
    pack_header(MsgType.TRIGGER_SERVICE4, 96) + raw4(name=b"test.Svc\0")[8:8 + 96],
    pack_header(MsgType.TRIGGER_SERVICE3, 96) + raw3(name=b"")[8:8 + 96],
], ids=["trigger4", "trigger3"])
def test_s53_short_fixed_part(host: QrexecHost, recorder: PolicyRecorder,
                              message: bytes) -> None:
    """S53 (QSB-089 class): a trigger whose length does not exceed its fixed part ends the
    daemon with status 1, and the policy is never asked."""
    dom, agent = attacked(host, recorder)
    agent.send(message)
    assert wait_exit(dom) == 1
    assert recorder.requests == []


# -- F: S62-S64 as the policy sees them -----------------------------------------------------
@pytest.mark.parametrize(("announced", "reply"), [(2, 2), (3, 3), (4, 4), (7, 4)])
def test_s62_s64_trigger_of_each_version(host: QrexecHost, recorder: PolicyRecorder,
                                         announced: int, reply: int) -> None:
    """S62, S63, S64: the daemon replies min(announced, 4) and accepts that version's
    trigger; only a version-4 request carries a requested_source line."""
    from .fixtures.hostile import HostileAgent, hostile_domain
    from .test_hostile_agent import raw2, raw3

    dom = hostile_domain(host)
    agent = HostileAgent(host, dom.domid)
    dom.start_daemon(wait=False, env={"QREXEC_POLICY_SOCKET": recorder.path})
    assert agent.handshake(announced) == reply
    dom.wait_daemon_ready()
    # `$` becomes `@` for protocol-2 agents only
    # (docs/reference/protocol.md#trigger-validation, step 2)
    if reply == 2:
        agent.send(raw2(service=b"test.Svc+x", target=b"$dispvm", ident=IDENT))
    elif reply == 3:
        agent.send(raw3(name=b"test.Svc+x\0", target=b"$dispvm", ident=IDENT))
    else:
        agent.send(raw4(name=b"test.Svc+x\0", target=b"@dispvm", ident=IDENT))
    assert agent.recv(40) == refused(IDENT)
    (request,) = recorder.wait(1)
    target = "_dispvm" if reply == 3 else "@dispvm"
    expected = {"source": "vm", "intended_target": target, "service_and_arg": "test.Svc+x"}
    if reply == 4:
        expected["requested_source"] = ""
    assert request == expected


def test_s62_version_2_agent_data_channels(host: QrexecHost) -> None:
    """A real agent limited to version 2: control HELLO 2, data channels at 2, chunks of at
    most 4096 bytes, bytes unchanged."""
    _, tap = tapped_world(host, agent_env={"QREXEC_MAX_PROTOCOL_VERSION": "2"})
    control = tap.control()
    wait_for(lambda: len(control.to_server.messages()) >= 1, 10, "daemon HELLO")
    assert control.to_client.messages()[0].payload == struct.pack("<I", 2)
    assert control.to_server.messages()[0].payload == struct.pack("<I", 2)
    data = bytes(range(256)) * 4096
    r = host.client("-d", "work", "DEFAULT:cat", input=data)
    assert (r.returncode, r.stdout) == (0, data)
    (conn,) = tap.data_connections()
    conn = tap.find(conn.port)
    # vchan.0.5.<port>: qrexec-client listens, work's handler connects
    assert conn.to_server.messages()[0].payload == struct.pack("<I", 2)
    msgs = conn.to_server.messages() + conn.to_client.messages()
    assert max(len(m.payload) for m in msgs) == 4096


# -- S57: an oversized data chunk ------------------------------------------------------------
@pytest.mark.parametrize(("version", "size"), [(4, 65537), (3, 65537), (2, 4097)])
def test_s57_oversized_data_chunk(host: QrexecHost, version: int, size: int) -> None:
    w = World(host)
    work, tap = tapped_domain(w, "work", 5)
    from pyqrexec.transport import vchan

    client = RawClient(host, "work")
    client.hello()
    client.request(MsgType.EXEC_CMDLINE, 0, 0, b"root:cat\0")
    _, _, port = client.reply()
    listener, path = vchan.listen(str(host.vchan_dir), 0, 5, port, pair_dirs=False)
    with vchan.accept_one(listener, path, 20) as chan:
        chan.settimeout(20)
        assert data_handshake(chan, version) == 4
        chan.sendall(pack_header(MsgType.DATA_STDIN, size) + b"x" * size)
        rest = read_until_eof(chan)
    # no output, no exit code: the handler gave up
    assert MsgType.DATA_EXIT_CODE not in [t for t, _ in split_messages(rest)]
    wait_for(lambda: re.search(r"call handled by pid \d+ ended with 1\n",
                               work.agent_log.read_text()), 10, "handler exit 1")
    control = tap.control()
    wait_for(lambda: any(m.type == MsgType.CONNECTION_TERMINATED
                         for m in control.to_client.messages()), 10, "CONNECTION_TERMINATED")
    assert [m.payload for m in control.to_client.messages()
            if m.type == MsgType.CONNECTION_TERMINATED] == [struct.pack("<II", 0, port)]
    assert client.closed()
    # the agent is fine and the port is free again
    assert raw_dom0_exec(work, b"root:echo ok").port == port
    assert host.client("-d", "work", "root:echo ok").stdout == b"ok\n"


# -- S58: pending-table exhaustion, S59: SERVICE_CONNECT answered twice ------------------------
def test_s58_pending_table_exhaustion(host: QrexecHost, recorder: PolicyRecorder) -> None:
    recorder.gate.clear()
    dom, agent = attacked(host, recorder)
    idents = [f"SOCKET{i}".encode().ljust(32, b"\0") for i in range(257)]
    agent.send(b"".join(raw4(name=b"test.Svc\0", ident=i) for i in idents[:256]))
    recorder.wait(256)
    agent.send(raw4(name=b"test.Svc\0", ident=idents[256]))
    assert agent.recv(40) == refused(idents[256])
    wait_log(dom, "Service request denied, too many pending requests")
    recorder.gate.set()
    answers = {agent.recv(40) for _ in range(256)}
    assert answers == {refused(i) for i in idents[:256]}
    assert len(recorder.requests) == 256
    # the table is usable again
    agent.send(raw4(name=b"test.Svc\0", ident=idents[256]))
    assert agent.recv(40) == refused(idents[256])


def test_s59_second_service_connect_for_answered_ident(host: QrexecHost,
                                                      recorder: PolicyRecorder) -> None:
    recorder.gate.clear()
    dom, agent = attacked(host, recorder)
    agent.send(raw4(name=b"test.Svc\0", ident=IDENT))
    recorder.wait(1)
    first = RawClient(host, "vm")
    first.hello()
    first.send(pack_exec(MsgType.SERVICE_CONNECT, 0, 0, b"SOCKET7\0"))
    t, _, port = first.reply()
    assert t == MsgType.SERVICE_CONNECT
    assert agent.recv_message() == (MsgType.SERVICE_CONNECT,
                                    pack_exec(MsgType.SERVICE_CONNECT, 0, port,
                                              b"SOCKET7\0")[8:])
    second = RawClient(host, "vm")
    second.hello()
    second.send(pack_exec(MsgType.SERVICE_CONNECT, 0, 0, b"SOCKET7\0"))
    assert second.closed()
    recorder.gate.set()
    # the worker's deny comes after the answer: nothing more reaches the agent for it
    client = RawClient(host, "vm")
    client.hello()
    client.request(MsgType.EXEC_CMDLINE, 0, 0, b"root:probe\0")
    _, _, probe_port = client.reply()
    assert agent.recv_message() == (MsgType.EXEC_CMDLINE,
                                    pack_exec(MsgType.EXEC_CMDLINE, 0, probe_port,
                                              b"root:probe\0")[8:])
    assert dom.daemon is not None and dom.daemon.poll() is None


def test_s59_hostile_dom0_clients_beside_a_running_call(host: QrexecHost) -> None:
    """Real daemon and agent: each hostile client is disconnected, nothing reaches the agent,
    and a call running on the same daemon meanwhile is undisturbed."""
    w, tap = tapped_world(host)
    proc = subprocess.Popen(
        [*program("qrexec-client"), f"--socket-dir={host.socket_dir}", "-d", "work",
         "root:read line; echo \"got $line\""],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=host.env(0))
    wait_for(lambda: bool(tap.data_connections()), 20, "the call's data channel")
    for name, message in [("hello-v2", hello(2)), *BAD_REQUESTS.items()]:
        client = RawClient(host, "work")
        if name == "hello-v2":
            assert client.read_hello() == 3
        else:
            client.hello()
        client.send(message)
        assert client.closed(), name
    out, _ = proc.communicate(b"line\n", timeout=30)
    assert (proc.returncode, out) == (0, b"got line\n")
    to_agent = [m.type for m in tap.control().to_server.messages()]
    assert to_agent == [MsgType.HELLO, MsgType.EXEC_CMDLINE]
    assert host.client("-d", "work", "root:echo ok").stdout == b"ok\n"


# -- S60: hostile local clients of the agent ----------------------------------------------------
_HOSTILE_TRIGGERS = {
    "v2-128": b"test.Svc".ljust(64, b"\0") + b"vault".ljust(32, b"\0") + IDENT,
    "t4-len160": pack_header(MsgType.TRIGGER_SERVICE4, 160) + bytes(64) + b"vault".ljust(64, b"\0")
    + IDENT,
    "t4-huge": pack_header(MsgType.TRIGGER_SERVICE4, 0xFFFFFFFF) + bytes(1000),
    "t3-type": pack_header(MsgType.TRIGGER_SERVICE3, 106) + bytes(106),
    "header-only": pack_header(MsgType.TRIGGER_SERVICE4, 170),
    "garbage": b"\xff" * 4096,
}


@pytest.mark.parametrize("message", list(_HOSTILE_TRIGGERS.values()),
                         ids=list(_HOSTILE_TRIGGERS))
def test_s60_hostile_trigger_socket_client(host: QrexecHost, message: bytes) -> None:
    w = World(host)
    work, tap = tapped_domain(w, "work", 5)
    w.domain("personal", 6)
    w.service("personal", "test.Slow", "#!/bin/sh\nread line\necho \"got $line\"\n")
    # a call in flight while the hostile client writes
    call = w.start_call("work", "personal", "test.Slow", stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: bool(tap.data_connections()), 20, "the call's data channel")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(work.agent_socket)
        try:
            s.sendall(message)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        # what qrexec-client-vm would read: nothing, i.e. "Request refused"
        assert read_until_eof(s) == b""
    out, _ = call.communicate(b"line\n", timeout=30)
    assert (call.returncode, out) == (0, b"got line\n")
    # the hostile request never reached the daemon; the agent still serves calls
    triggers = [m for m in tap.control().to_client.messages()
                if m.type in (MsgType.TRIGGER_SERVICE, MsgType.TRIGGER_SERVICE3,
                              MsgType.TRIGGER_SERVICE4)]
    assert len(triggers) == 1
    r = w.call("work", "personal", "test.Slow", input=b"again\n")
    assert (r.returncode, r.stdout) == (0, b"got again\n")
    assert work.agent is not None and work.agent.poll() is None


# -- S61: option-looking arguments ---------------------------------------------------------------
def test_s61_option_looking_argument(host: QrexecHost) -> None:
    w = World(host)
    w.domain("work", 5)
    w.domain("personal", 6)
    w.service("personal", "test.Svc", '#!/bin/sh\nprintf "%s|" "$@"\necho\n')
    r = w.call("work", "personal", "test.Svc+-rf")
    assert (r.returncode, r.stdout) == (0, b"-rf|\n")
    r = w.call("work", "personal", "test.Svc+$(id)*")
    assert (r.returncode, r.stdout) == (0, b"__id__|\n")


# -- refusals and failures never leak ----------------------------------------------------------
def fd_links(pid: int) -> list[str]:
    fds = Path(f"/proc/{pid}/fd")
    return sorted(os.readlink(fds / f) for f in os.listdir(fds))


def settled_fd_counts(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, int]:
    """Open fds per process once the last call's handlers are reaped (stable for 0.5 s)."""
    last: dict[str, int] = {}
    stable_since = time.monotonic()
    deadline = stable_since + 20
    while time.monotonic() < deadline:
        now = {name: fd_count(p.pid) for name, p in procs.items()}
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 0.5:
            return now
        time.sleep(0.05)
    raise AssertionError(f"fd counts never settled: {last}")


def test_thousand_refused_and_allowed_calls_do_not_leak(host: QrexecHost) -> None:
    w = World(host)
    work = w.domain("work", 5)
    personal = w.domain("personal", 6)
    w.service("personal", "test.True", "#!/bin/sh\nexit 0\n")
    procs = {f"{d.name} {kind}": p for d in (work, personal)
             for kind, p in (("agent", d.agent), ("daemon", d.daemon)) if p is not None}

    def allowed(_: int) -> int | None:
        return raw_vm_call(work, b"personal", b"test.True")

    def denied(_: int) -> int | None:
        return raw_vm_call(work, b"deny-me", b"test.True")

    def failed(_: int) -> int | None:
        return raw_vm_call(work, b"personal", b"test.Missing")

    assert allowed(0) == 0
    assert denied(0) is None
    assert failed(0) == 127
    before = settled_fd_counts(procs)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(allowed, range(1000)))
        assert results == [0] * 1000
        results = list(pool.map(denied, range(1000)))
        assert results == [None] * 1000
        results = list(pool.map(failed, range(200)))
        assert results == [127] * 200
    # handlers report their end asynchronously: wait for the agents to settle
    after = settled_fd_counts(procs)
    assert after == before, {n: fd_links(p.pid) for n, p in procs.items()}
    # every port was released: the next allocation gets the lowest one again
    for dom in (work, personal):
        assert raw_dom0_exec(dom, b"root:true").port == 513
    assert raw_dom0_exec(personal, b"root:true", peer=7).port == 514
    assert all(p.poll() is None for p in procs.values())

