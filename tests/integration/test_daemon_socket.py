"""Raw dom0 clients on the daemon's Unix socket, port allocation, agent restart, SIGTERM and
the launcher (docs/reference/protocol.md#control-channel-lifecycle,
docs/reference/protocol.md#data-ports, docs/reference/protocol.md#client-socket, the "dom0
client" rows of docs/reference/protocol.md#refusals; docs/reference/cli.md#qrexec-daemon).

The daemon (domid 42, name `vm`, default user `root`) talks to a fake agent, so the test sees
exactly what is forwarded.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import (
    HEADER,
    hello,
    pack_connection_terminated,
    pack_exec,
    pack_header,
    pack_trigger2,
    pack_trigger4,
    parse_exec,
)
from pyqrexec.system.log import REPEAT_INTERVAL

from .fixtures.hostile import (
    TIMEOUT,
    HostileAgent,
    RawClient,
    read_until_eof,
    recv_exact,
    refused,
    socket_paths,
    start_attacked_daemon,
    still_open,
    terminate,
    wait_exit,
    wait_log,
)
from .fixtures.processes import Domain, QrexecHost, program, wait_for

EXEC, JUST, CONNECT = MsgType.EXEC_CMDLINE, MsgType.JUST_EXEC, MsgType.SERVICE_CONNECT
X = 42  # the attacked daemon's domid


@pytest.fixture
def vm(host: QrexecHost) -> tuple[Domain, HostileAgent]:
    return start_attacked_daemon(host, 4, "vm", X)


def allocate(host: QrexecHost, agent: HostileAgent, peer: int,
             cmd: bytes = b"root:true\0") -> tuple[RawClient, int]:
    """A well-formed request for a new port: returns the waiting client and the port, and
    checks what reached the agent."""
    client = RawClient(host, "vm")
    client.hello()
    client.request(EXEC, peer, 0, cmd)
    t, domid, port = client.reply()
    assert (t, domid) == (EXEC, X)
    assert agent.recv_message() == (EXEC, forwarded(peer, port, cmd))
    return client, port


def forwarded(peer: int, port: int, cmd: bytes) -> bytes:
    """exec_params + payload as the agent must receive it."""
    return pack_exec(EXEC, peer, port, cmd)[8:]


def assert_nothing_forwarded(host: QrexecHost, agent: HostileAgent) -> None:
    """The next message the agent gets is a probe's, so nothing came before it."""
    client, _ = allocate(host, agent, 0, b"root:probe\0")
    client.close()


def test_socket_names(host: QrexecHost) -> None:
    """Stale names are replaced; the socket is world-accessible; links are relative."""
    dom = host.domain("vm", X)
    stale = [host.socket_dir / f"qrexec.{X}", host.socket_dir / "qrexec.vm",
             host.socket_dir / f"qrexec.uuid:{dom.uuid}"]
    stale[0].write_text("stale")
    stale[1].symlink_to("nowhere")
    stale[2].write_text("stale")
    agent = HostileAgent(host, X)
    dom.start_daemon(wait=False)
    agent.handshake(4)
    wait_for(lambda: all(p.is_symlink() for p in stale[1:]), TIMEOUT, "symlinks")
    assert stat.S_ISSOCK(stale[0].lstat().st_mode)
    assert stat.S_IMODE(stale[0].lstat().st_mode) == 0o777
    for p in stale[1:]:
        assert os.readlink(p) == f"qrexec.{X}"
    for name in ("vm", str(X), f"uuid:{dom.uuid}"):
        client = RawClient(host, name)
        assert client.read_hello() == 3
        client.close()


# -- HELLO and request validation (client socket, steps 1-2) ----------------------------------
@pytest.mark.parametrize(
    "message",
    [
        hello(2),
        hello(0),
        HEADER.pack(MsgType.HELLO, 5) + b"\3\0\0\0\0",
        HEADER.pack(MsgType.HELLO, 0),
        HEADER.pack(EXEC, 4) + b"\3\0\0\0",
        pack_exec(EXEC, 0, 0, b"root:true\0"),  # request without HELLO
        b"\0\3\0",  # EOF inside the HELLO
        b"",  # EOF instead of the HELLO
    ],
    ids=["v2", "v0", "len5", "len0", "type", "no-hello", "short", "eof"],
)
def test_bad_client_hello(host: QrexecHost, vm: tuple[Domain, HostileAgent],
                          message: bytes) -> None:
    dom, agent = vm
    client = RawClient(host, "vm")
    assert client.read_hello() == 3
    client.send(message)
    if len(message) < 12:
        client.sock.shutdown(socket.SHUT_WR)
    assert client.closed()
    assert_nothing_forwarded(host, agent)
    assert dom.daemon is not None and dom.daemon.poll() is None


def test_newer_client_hello_is_accepted(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    """No upper bound on the client's version (docs/reference/protocol.md#hello)."""
    _, agent = vm
    client = RawClient(host, "vm")
    client.hello(9)
    client.request(EXEC, 0, 0, b"root:true\0")
    assert client.reply() == (EXEC, X, 513)


BAD_REQUESTS = {
    "type-refused": pack_exec(MsgType.SERVICE_REFUSED, 0, 0, b"SOCKET1\0"),
    "type-1ff": pack_exec(0x1FF, 0, 0, b"root:true\0"),
    "type-trigger": pack_exec(MsgType.TRIGGER_SERVICE4, 0, 0, b"root:true\0"),
    "type-hello": hello(3),
    "type-stdin": pack_exec(MsgType.DATA_STDIN, 0, 0, b"root:true\0"),
    "len0": pack_header(EXEC, 0),
    "len8": pack_header(EXEC, 8) + bytes(8),
    "len8-just": pack_header(JUST, 8) + bytes(8),
    "len65536": pack_header(EXEC, 65536),
    "len-huge": pack_header(EXEC, 0xFFFFFFFF),
    "no-nul": pack_exec(EXEC, 0, 0, b"root:true"),
    "no-final-nul": pack_exec(EXEC, 0, 0, b"root:true\0x"),
    "no-nul-max": pack_exec(EXEC, 0, 0, b"r" * (65535 - 8)),
    "connect-unknown": pack_exec(CONNECT, 0, 0, b"SOCKET5\0"),
    "connect-unknown-32": pack_exec(CONNECT, 0, 0, b"SOCKET5".ljust(32, b"\0")),
    "connect-empty": pack_exec(CONNECT, 0, 0, bytes(32)),
    "connect-port": pack_exec(CONNECT, 0, 513, b"SOCKET5\0"),
    "port-1": pack_exec(EXEC, 0, 1, b"root:true\0"),
    "port-512": pack_exec(EXEC, 0, 512, b"root:true\0"),
    "port-769": pack_exec(JUST, 0, 769, b"root:true\0"),
    "port-max": pack_exec(EXEC, 0, 0xFFFFFFFF, b"root:true\0"),
}


@pytest.mark.parametrize("message", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_bad_client_request(host: QrexecHost, vm: tuple[Domain, HostileAgent],
                            message: bytes) -> None:
    dom, agent = vm
    client = RawClient(host, "vm")
    client.hello()
    client.send(message)
    assert client.closed()
    assert_nothing_forwarded(host, agent)
    assert dom.daemon is not None and dom.daemon.poll() is None


def test_bad_client_request_keeps_ports(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    """A request refused at validation allocates nothing: the next one still gets 513."""
    _, agent = vm
    for message in BAD_REQUESTS.values():
        client = RawClient(host, "vm")
        client.hello()
        client.send(message)
        assert client.closed()
    client, port = allocate(host, agent, 0)
    assert port == 513


# -- forwarding (client socket, steps 3-5) ----------------------------------------------------
def test_spec_byte_example(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    _, agent = vm
    client = RawClient(host, "vm")
    client.hello()
    client.send(bytes.fromhex("00020000 10000000 00000000 00000000 75736572 3a696400"))
    assert recv_exact(client.sock, 16) == bytes.fromhex("00020000 08000000 2a000000 01020000")
    assert agent.recv(24) == bytes.fromhex("00020000 10000000 00000000 01020000 75736572 3a696400")


@pytest.mark.parametrize("msgtype", [EXEC, JUST])
@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        (b"DEFAULT:echo hi\0", b"root:echo hi\0"),
        (b"DEFAULT:\0", b"root:\0"),
        (b"DEFAULT:a\0b\0", b"root:a\0b\0"),
        (b"DEFAULTX:echo\0", b"DEFAULTX:echo\0"),
        (b"DEFAULT\0", b"DEFAULT\0"),
        (b"default:echo\0", b"default:echo\0"),
        (b"user:DEFAULT:x\0", b"user:DEFAULT:x\0"),
        (b"\0", b"\0"),
    ],
)
def test_request_forwarded(host: QrexecHost, vm: tuple[Domain, HostileAgent], msgtype: int,
                           sent: bytes, forwarded: bytes) -> None:
    _, agent = vm
    client = RawClient(host, "vm")
    client.hello()
    client.request(msgtype, 0, 0, sent)
    assert client.reply() == (msgtype, X, 513)
    t, payload = agent.recv_message()
    assert t == msgtype
    params = parse_exec(payload)
    assert (params.connect_domain, params.connect_port, params.payload) == (0, 513, forwarded)
    # RUNNING: the connection stays open with nothing more to say
    assert still_open(client.sock)


def test_given_port_is_forwarded_without_reply(host: QrexecHost,
                                               vm: tuple[Domain, HostileAgent]) -> None:
    """EXEC with P != 0 is tolerated and logged (client socket, steps 2-3): no reply, no
    allocation."""
    dom, agent = vm
    client = RawClient(host, "vm")
    client.hello()
    client.request(EXEC, 7, 600, b"DEFAULT:x\0")
    assert agent.recv_message() == (EXEC, pack_exec(EXEC, 7, 600, b"root:x\0")[8:])
    assert still_open(client.sock)
    client.close()
    assert allocate(host, agent, 0)[1] == 513


def test_byte_after_request_closes_but_keeps_port(host: QrexecHost,
                                                  vm: tuple[Domain, HostileAgent]) -> None:
    dom, agent = vm
    client, port = allocate(host, agent, 0)
    assert port == 513
    client.send(b"x")
    assert client.closed()
    wait_log(dom, "Unexpected data received from client")
    assert allocate(host, agent, 0)[1] == 514


def test_request_and_extra_bytes_in_one_write(host: QrexecHost,
                                              vm: tuple[Domain, HostileAgent]) -> None:
    """The request is forwarded, then the trailing byte closes the connection."""
    dom, agent = vm
    client = RawClient(host, "vm")
    client.hello()
    client.send(pack_exec(EXEC, 0, 0, b"root:true\0") + b"junk")
    assert read_until_eof(client.sock) == HEADER.pack(EXEC, 8) + bytes.fromhex("2a000000 01020000")
    assert agent.recv_message() == (EXEC, forwarded(0, 513, b"root:true\0"))
    assert allocate(host, agent, 0)[1] == 514


def test_client_eof_keeps_port(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    _, agent = vm
    client, port = allocate(host, agent, 0)
    client.close()
    assert allocate(host, agent, 0)[1] == port + 1


# -- port allocation and release --------------------------------------------------------------
def test_parity_rule_and_release(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    _, agent = vm
    got = {}
    for peer in (43, 44, 0, 41, 0, 42, 1000):
        got.setdefault(peer, []).append(allocate(host, agent, peer)[1])
    assert got == {43: [514], 44: [516], 0: [513, 517], 41: [515], 42: [519], 1000: [518]}
    agent.send(pack_connection_terminated(43, 514))
    assert allocate(host, agent, 43)[1] == 514
    # a wrong domain is harmless: 516 stays held for 44
    agent.send(pack_connection_terminated(99, 516))
    agent.send(pack_connection_terminated(0, 516))
    assert allocate(host, agent, 44)[1] == 520
    # releasing a free port does nothing either
    agent.send(pack_connection_terminated(0, 700))
    assert allocate(host, agent, 0)[1] == 521


def test_terminated_closes_waiting_client(host: QrexecHost,
                                          vm: tuple[Domain, HostileAgent]) -> None:
    _, agent = vm
    first, p1 = allocate(host, agent, 43)
    second, p2 = allocate(host, agent, 43)
    agent.send(pack_connection_terminated(44, p1))  # wrong domain: nobody is woken
    assert still_open(first.sock)
    agent.send(pack_connection_terminated(43, p1))
    assert first.closed()
    assert still_open(second.sock)
    agent.send(pack_connection_terminated(43, p2))
    assert second.closed()


def test_terminated_after_client_left(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    """The waiter is gone, the release still works."""
    dom, agent = vm
    client, port = allocate(host, agent, 0)
    client.close()
    agent.send(pack_connection_terminated(0, port))
    assert allocate(host, agent, 0)[1] == port
    assert dom.daemon is not None and dom.daemon.poll() is None


def test_port_exhaustion(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    dom, agent = vm
    ports = []
    for _ in range(256):
        client, port = allocate(host, agent, 0)
        client.close()
        ports.append(port)
    assert ports == list(range(513, 769))
    client = RawClient(host, "vm")
    client.hello()
    client.request(EXEC, 0, 0, b"root:true\0")
    assert client.closed()
    wait_log(dom, "]: Failed to allocate new vchan port, too many clients?\n")
    assert dom.daemon is not None and dom.daemon.poll() is None
    # nothing was forwarded, and a release makes room again
    agent.send(pack_connection_terminated(0, 700))
    assert allocate(host, agent, 0)[1] == 700


def test_port_exhaustion_by_parity(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    """The higher peers only get the 128 even ports; the lower peers still have the odd ones.
    (Two higher peers fill that half: one alone may hold only its share of it.)"""
    dom, agent = vm
    for i in range(128):
        allocate(host, agent, 43 + i % 2)[0].close()
    client = RawClient(host, "vm")
    client.hello()
    client.request(EXEC, 45, 0, b"root:true\0")
    assert client.closed()
    wait_log(dom, "]: Failed to allocate new vchan port, too many clients?\n")
    assert allocate(host, agent, 41)[1] == 513


def refused_port(host: QrexecHost, peer: int) -> None:
    """A request for a new port that the daemon drops without an answer."""
    client = RawClient(host, "vm")
    client.hello()
    client.request(EXEC, peer, 0, b"root:true\0")
    assert client.closed()


def test_port_share_per_caller(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    """One caller holds at most 64 ports (the default share); the others of its half still
    get theirs, and a release gives the caller one back."""
    dom, agent = vm
    ports = [allocate(host, agent, 43)[1] for _ in range(64)]
    assert ports == list(range(514, 514 + 128, 2))
    refused_port(host, 43)
    wait_log(dom, "]: Domain 43 holds its share of 64 data ports, refusing it another\n")
    assert allocate(host, agent, 44)[1] == 514 + 128
    # dom0 is no caller with a share: it gets ports past 64 of its own
    assert len({allocate(host, agent, 0)[1] for _ in range(70)}) == 70
    agent.send(pack_connection_terminated(43, 600))
    assert allocate(host, agent, 43)[1] == 600
    refused_port(host, 43)
    # one line for the cause, however often the caller hits it
    for _ in range(20):
        refused_port(host, 43)
    log = dom.daemon_log.read_text()
    assert log.count("Domain 43 holds its share") == 1, log
    # ... and when the interval ends, one more that counts the rest
    wait_log(dom, "refusing it another (and ", REPEAT_INTERVAL + TIMEOUT)
    counted = re.findall(r"refusing it another \(and (\d+) more like it in the last 10 s\)\n",
                         dom.daemon_log.read_text())
    assert counted and 1 <= int(counted[0]) <= 21, counted
    assert dom.daemon is not None and dom.daemon.poll() is None


@pytest.mark.parametrize("how", ["option", "environment"])
def test_port_share_configured(host: QrexecHost, how: str) -> None:
    """--max-ports-per-caller (or its variable) sets the share; 128 = the whole half."""
    if how == "option":
        dom, agent = start_attacked_daemon(host, 4, "vm", X,
                                           extra=["--max-ports-per-caller=128"])
    else:
        dom, agent = start_attacked_daemon(host, 4, "vm", X,
                                           env={"QREXEC_MAX_PORTS_PER_CALLER": "128"})
    assert [allocate(host, agent, 43)[1] for _ in range(128)][-1] == 768
    refused_port(host, 43)
    wait_log(dom, "]: Failed to allocate new vchan port, too many clients?\n")


def test_port_share_option_wins(host: QrexecHost) -> None:
    dom, agent = start_attacked_daemon(host, 4, "vm", X, extra=["--max-ports-per-caller=2"],
                                       env={"QREXEC_MAX_PORTS_PER_CALLER": "100"})
    assert [allocate(host, agent, 41)[1] for _ in range(2)] == [513, 515]
    refused_port(host, 41)
    wait_log(dom, "]: Domain 41 holds its share of 2 data ports, refusing it another\n")


@pytest.mark.parametrize(("args", "env"), [
    (["--max-ports-per-caller=0"], {}),
    (["--max-ports-per-caller=129"], {}),
    (["--max-ports-per-caller=many"], {}),
    ([], {"QREXEC_MAX_PORTS_PER_CALLER": "-1"}),
    ([], {"QREXEC_MAX_PORTS_PER_CALLER": ""}),
])
def test_port_share_invalid(host: QrexecHost, args: list[str], env: dict[str, str]) -> None:
    r = subprocess.run([*program("qrexec-daemon"), "--direct", "-u", "x", *args, "42", "vm"],
                       capture_output=True, env=host.env(0, **env), timeout=30)
    assert r.returncode == 1
    assert b"invalid per-caller port share" in r.stderr
    assert b"usage: qrexec-daemon" in r.stderr


# -- client table: more than 256 clients ------------------------------------------------------
def test_257th_client_is_closed(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    dom, agent = vm
    clients = []
    for _ in range(256):
        c = RawClient(host, "vm")
        assert c.read_hello() == 3
        clients.append(c)
    extra = RawClient(host, "vm")
    assert read_until_eof(extra.sock) == b""  # not even a HELLO
    assert dom.daemon is not None and dom.daemon.poll() is None
    for c in clients[:5]:
        c.close()

    def served() -> bool:
        c = RawClient(host, "vm")
        try:
            ok = c.sock.recv(12) == hello(3)
        except ConnectionResetError:
            ok = False
        c.close()
        return ok

    wait_for(served, TIMEOUT, "a free client slot")
    # the clients still connected can go on with their request
    clients[10].sock.sendall(hello(3))
    clients[10].request(EXEC, 0, 0, b"root:true\0")
    assert clients[10].reply() == (EXEC, X, 513)
    for c in clients:
        c.close()


# -- agent restart -----------------------------------------------------------------------------
@pytest.mark.parametrize("new_version", [4, 2])
def test_agent_restart(host: QrexecHost, vm: tuple[Domain, HostileAgent], new_version: int) -> None:
    dom, agent = vm
    waiting, port = allocate(host, agent, 0)
    assert port == 513
    half = RawClient(host, "vm")  # in the HELLO state
    assert half.read_hello() == 3
    agent.close()
    wait_for(lambda: not any(p.exists() or p.is_symlink() for p in socket_paths(dom)), TIMEOUT,
             "sockets removed")
    assert waiting.closed()
    assert half.closed()
    assert dom.daemon is not None and dom.daemon.poll() is None

    agent = HostileAgent(host, X)
    assert agent.handshake(new_version) == new_version
    wait_for(lambda: all(p.exists() for p in socket_paths(dom)), TIMEOUT, "sockets back")
    for p in socket_paths(dom)[1:]:
        assert os.readlink(p) == f"qrexec.{X}"
    wait_log(dom, "qrexec-agent has reconnected")
    # the port table survived
    assert allocate(host, agent, 0)[1] == 514
    agent.send(pack_connection_terminated(0, 513))
    assert allocate(host, agent, 0)[1] == 513
    # and the new version is the one policed
    if new_version == 2:
        agent.send(pack_trigger2(b"+x", b"dom0", b"A!"))
        assert agent.recv(40) == refused(b"A!".ljust(32, b"\0"))
        agent.send(pack_trigger4(b"qubes.Svc", b"dom0", b"A"))
        assert wait_exit(dom) == 1
    else:
        agent.send(pack_trigger4(b"+x", b"dom0", b"A!"))
        assert agent.recv(40) == refused(b"A!".ljust(32, b"\0"))


def test_agent_restart_bad_hello_is_fatal(host: QrexecHost,
                                          vm: tuple[Domain, HostileAgent]) -> None:
    dom, agent = vm
    agent.close()
    agent = HostileAgent(host, X)
    agent.accept()
    agent.send(hello(1))
    assert wait_exit(dom) == 1
    assert "Incompatible agent protocol version (remote 1, local 4)" in dom.daemon_log.read_text()


def test_agent_restart_connect_error_is_fatal(host: QrexecHost,
                                              vm: tuple[Domain, HostileAgent]) -> None:
    """Reconnect failure -> exit 1; only the first connection's failure is status 3."""
    dom, agent = vm
    agent.close()
    wait_for(lambda: not socket_paths(dom)[0].exists(), TIMEOUT, "sockets removed")
    agent.path.symlink_to(agent.path.name)  # connect() fails with ELOOP, not ENOENT
    assert wait_exit(dom) == 1


def test_startup_connect_error_is_3(host: QrexecHost) -> None:
    dom = host.domain("vm", X)
    path = host.vchan_dir / f"vchan.{X}.0.512.sock"
    path.symlink_to(path.name)
    dom.start_daemon(wait=False)
    assert wait_exit(dom) == 3


def test_client_request_byte_by_byte(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    _, agent = vm
    client = RawClient(host, "vm")
    assert client.read_hello() == 3
    for b in hello(3) + pack_exec(EXEC, 0, 0, b"DEFAULT:x\0"):
        client.send(bytes([b]))
        time.sleep(0.002)
    assert client.reply() == (EXEC, X, 513)
    assert agent.recv_message() == (EXEC, forwarded(0, 513, b"root:x\0"))


def test_agent_restarts_twice(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    dom, agent = vm
    for _ in range(2):
        agent.close()
        agent = HostileAgent(host, X)
        agent.handshake(4)
    dom.wait_daemon_ready()
    assert allocate(host, agent, 0)[1] == 513
    assert dom.daemon_log.read_text().count("qrexec-agent has reconnected") == 2


# -- SIGTERM -----------------------------------------------------------------------------------
def test_sigterm(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    dom, agent = vm
    waiting, _ = allocate(host, agent, 0)
    assert all(p.exists() for p in socket_paths(dom))
    assert dom.daemon is not None
    dom.daemon.send_signal(signal.SIGTERM)
    assert wait_exit(dom) == 0
    assert not any(p.exists() or p.is_symlink() for p in socket_paths(dom))
    assert read_until_eof(agent.sock) == b""
    assert waiting.closed()


def test_sigterm_while_agent_away(host: QrexecHost, vm: tuple[Domain, HostileAgent]) -> None:
    dom, agent = vm
    agent.close()
    wait_for(lambda: not socket_paths(dom)[0].exists(), TIMEOUT, "sockets removed")
    assert dom.daemon is not None
    dom.daemon.send_signal(signal.SIGTERM)
    assert wait_exit(dom) == 0


def catches_sigterm(pid: int) -> bool:
    """SIGTERM is in the process's caught-signal mask (/proc/PID/status SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_sigterm_before_agent(host: QrexecHost) -> None:
    """Waiting for the agent (no timeout in --direct with NOWAIT) is interruptible."""
    dom = host.domain("vm", X)
    proc = dom.start_daemon(wait=False, env={"QREXEC_STARTUP_NOWAIT": "1"})
    wait_for(lambda: catches_sigterm(proc.pid), TIMEOUT, "SIGTERM handler")
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(dom) == 0
    assert not list(host.socket_dir.iterdir())


def test_sigterm_during_hello(host: QrexecHost) -> None:
    dom = host.domain("vm", X)
    agent = HostileAgent(host, X)
    proc = dom.start_daemon(wait=False)
    agent.accept()  # and never say HELLO
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(dom) == 0
    assert read_until_eof(agent.sock) == b""


# -- launcher (docs/reference/cli.md#qrexec-daemon, docs/reference/protocol.md#timeouts) -----
def launcher(host: QrexecHost, *args: str, env: dict[str, str] | None = None,
             ) -> subprocess.Popen[bytes]:
    argv = [*program("qrexec-daemon"), f"--socket-dir={host.socket_dir}", *args]
    e = host.env(0, QREXEC_LOG_DIR=str(host.root), **(env or {}))
    return subprocess.Popen(argv, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@contextlib.contextmanager
def launched(host: QrexecHost, agent: HostileAgent,
             *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """The launcher, and afterwards neither it nor the daemon it forked left running."""
    proc = launcher(host, *args)
    try:
        yield proc
    finally:
        if agent.conn is not None:
            terminate(agent.peer_pid())
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_launcher_waits_for_agent(host: QrexecHost) -> None:
    agent = HostileAgent(host, X)
    with launched(host, agent, "--uuid=u-1", str(X), "vm") as proc:
        assert agent.handshake(4) == 4
        out, err = proc.communicate(timeout=TIMEOUT * 2)
        assert proc.returncode == 0, err
        assert b"Waiting for VM's qrexec agent." in err
        assert (host.socket_dir / f"qrexec.{X}").exists()
        assert os.readlink(host.socket_dir / "qrexec.uuid:u-1") == f"qrexec.{X}"
        assert (host.root / "qrexec.vm.log").exists()
        # the daemon goes on serving after the launcher left
        client = RawClient(host, "vm")
        client.hello()
        client.request(EXEC, 0, 0, b"DEFAULT:true\0")
        assert client.reply() == (EXEC, X, 513)
        assert agent.recv_message()[1][8:] == b"user:true\0"
    wait_for(lambda: not (host.socket_dir / f"qrexec.{X}").exists(), TIMEOUT, "daemon exit")


def test_launcher_quiet(host: QrexecHost) -> None:
    agent = HostileAgent(host, X)
    with launched(host, agent, "-q", "--uuid=u-1", str(X), "vm") as proc:
        agent.handshake(4)
        assert proc.communicate(timeout=TIMEOUT * 2) == (b"", b"")
        assert proc.returncode == 0


def test_launcher_bad_agent_hello(host: QrexecHost) -> None:
    agent = HostileAgent(host, X)
    proc = launcher(host, "--uuid=u-1", str(X), "vm")
    agent.accept()
    agent.send(hello(1))
    out, err = proc.communicate(timeout=TIMEOUT * 2)
    assert proc.returncode == 1
    assert b"Connection to the VM failed" in err
    log = (host.root / "qrexec.vm.log").read_text()
    assert "Incompatible agent protocol version (remote 1, local 4)" in log


def test_launcher_startup_timeout(host: QrexecHost) -> None:
    proc = launcher(host, "--uuid=u-1", str(X), "vm", env={"QREXEC_STARTUP_TIMEOUT": "1"})
    out, err = proc.communicate(timeout=TIMEOUT * 3)
    assert proc.returncode == 3
    assert b"Waiting for VM's qrexec agent." in err
    assert b"Cannot connect to 'vm' qrexec agent for 1 seconds, giving up" in err
    assert "qrexec connection timeout" in (host.root / "qrexec.vm.log").read_text()
    assert not (host.socket_dir / f"qrexec.{X}").exists()


def test_launcher_nowait(host: QrexecHost) -> None:
    proc = launcher(host, "--uuid=u-1", str(X), "vm", env={"QREXEC_STARTUP_NOWAIT": "1"})
    out, err = proc.communicate(timeout=TIMEOUT * 2)
    assert proc.returncode == 0
    # the child is still waiting: serve it, then stop it
    agent = HostileAgent(host, X)
    agent.handshake(4)
    terminate(agent.peer_pid())
    assert read_until_eof(agent.sock) == b""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([str(X), "vm"], b"Domain UUID option missing!"),
        (["--uuid=u-1", "0", "vm"], b"domain id=0?"),
        (["--uuid=u-1", "-D", "0", "vm"], b"domain id=0?"),
        (["--uuid=u-1", str(X)], b"usage"),
        (["--uuid=u-1", str(X), "vm", "user", "extra"], b"usage"),
        (["-h"], b"usage"),
    ],
    ids=["no-uuid", "domid0", "domid0-direct", "one-arg", "four-args", "help"],
)
def test_daemon_usage_errors(host: QrexecHost, args: list[str], message: bytes) -> None:
    proc = launcher(host, *args)
    out, err = proc.communicate(timeout=TIMEOUT * 2)
    assert proc.returncode == 1
    assert message in err
    assert not list(host.socket_dir.iterdir())
