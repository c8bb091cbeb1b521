"""A hostile peer on a data channel: the real service side (agent handler) facing a raw
caller, and the real qrexec-client and qrexec-client-vm facing a raw service side. Whatever
arrives, that one call ends with the status docs/reference/protocol.md#caller-exit-status and
docs/reference/protocol.md#refusals name (docs/reference/protocol.md#data-messages has the
rules), and the programs go on serving other calls.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
from collections.abc import Callable

import pytest

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import HEADER, hello

from .fixtures.hostile import (
    HostileAgent,
    read_until_eof,
    recv_exact,
    start_attacked_daemon,
)
from .fixtures.processes import Domain, QrexecHost, program, wait_for
from .fixtures.rawcalls import as_caller, as_dom0_caller, as_target, data_handshake, split_messages
from .fixtures.world import World

TIMEOUT = 20.0
STDIN, STDOUT, STDERR, EXIT = (MsgType.DATA_STDIN, MsgType.DATA_STDOUT, MsgType.DATA_STDERR,
                               MsgType.DATA_EXIT_CODE)


def msg(t: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(t, len(payload)) + payload


# -- the service side facing a hostile caller -------------------------------------------------
def handler_exits(dom: Domain, code: int) -> None:
    ended = re.compile(rf"call handled by pid \d+ ended with {code}\n")
    wait_for(lambda: ended.search(dom.agent_log.read_text()), TIMEOUT, f"a handler exit {code}")


@pytest.mark.parametrize("junk", [
    msg(0x299),
    msg(MsgType.HELLO, struct.pack("<I", 4)),
    HEADER.pack(STDIN, 0xFFFFFFFF),
], ids=["unknown-type", "second-hello", "huge-length"])
def test_caller_breaking_the_channel_ends_only_its_call(host: QrexecHost, junk: bytes) -> None:
    dom = World(host).domain("work", 5)
    with as_caller(dom, b"root:cat") as chan:
        assert data_handshake(chan, 4) == 4
        chan.sendall(msg(STDIN, b"before\n") + junk)
        got = split_messages(read_until_eof(chan))
    assert EXIT not in [t for t, _ in got]
    handler_exits(dom, 1)
    assert host.client("-d", "work", "root:echo ok").stdout == b"ok\n"


@pytest.mark.parametrize("first", [msg(STDIN, b"x"), msg(MsgType.HELLO, struct.pack("<I", 1))],
                         ids=["no-hello", "version-1"])
def test_caller_without_a_usable_hello(host: QrexecHost, first: bytes) -> None:
    dom = World(host).domain("work", 5)
    with as_caller(dom, b"root:cat") as chan:
        chan.sendall(first)
        got = split_messages(read_until_eof(chan))
    assert got[:1] == [(MsgType.HELLO, struct.pack("<I", 4))]
    assert EXIT not in [t for t, _ in got]
    handler_exits(dom, 1)
    assert host.client("-d", "work", "root:echo ok").stdout == b"ok\n"


def test_caller_sending_service_messages(host: QrexecHost) -> None:
    """STDOUT from a caller counts as STDIN (one warning per call); STDERR and EXIT_CODE
    from a caller are ignored and logged."""
    dom = World(host).domain("work", 5)
    with as_caller(dom, b"root:cat") as chan:
        assert data_handshake(chan, 4) == 4
        chan.sendall(msg(STDOUT, b"one\n") + msg(STDERR, b"noise") + msg(EXIT, b"\7\0\0\0")
                     + msg(STDOUT, b"two\n") + msg(STDIN))
        got = split_messages(read_until_eof(chan))
    out = b"".join(p for t, p in got if t == STDOUT)
    assert out == b"one\ntwo\n"
    assert got[-1] == (EXIT, struct.pack("<i", 0))
    assert dom.agent_log.read_text().count("client sent MSG_DATA_STDOUT") == 1


# -- callers facing a hostile service side ----------------------------------------------------
def fake_handler(agent: HostileAgent, own: int, service: bytes, hello_first: bool) -> None:
    """The fake agent's "handler" for the EXEC_CMDLINE it is sent: connects the data channel,
    answers with `service` (after a proper HELLO exchange when `hello_first`), closes."""
    with as_target(agent, own) as chan:
        if hello_first:
            chan.sendall(hello(4))
            assert recv_exact(chan, 12) == hello(4)
        chan.sendall(service)
        chan.shutdown(socket.SHUT_WR)
        read_until_eof(chan)


def finish(proc: subprocess.Popen[bytes], serve: Callable[[], None]
           ) -> subprocess.CompletedProcess[bytes]:
    """Run `serve` while `proc` runs; its result once it ended."""
    try:
        serve()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_against(host: QrexecHost, service: bytes, *, hello_first: bool = True
                ) -> subprocess.CompletedProcess[bytes]:
    """qrexec-client -d vm runs a command; a fake agent's "handler" answers with `service`."""
    dom, agent = start_attacked_daemon(host, 4)
    argv = [*program("qrexec-client"), f"--socket-dir={host.socket_dir}", "-d", dom.name,
            "root:anything"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=host.env(0))
    return finish(proc, lambda: fake_handler(agent, dom.domid, service, hello_first))


@pytest.mark.parametrize("junk", [
    msg(0x299),
    HEADER.pack(STDOUT, 65537) + b"x" * 65537,
    msg(MsgType.HELLO, struct.pack("<I", 4)),
], ids=["unknown-type", "oversize", "second-hello"])
def test_client_exits_1_on_a_broken_channel(host: QrexecHost, junk: bytes) -> None:
    r = run_against(host, msg(STDOUT, b"early\n") + junk + msg(STDOUT) + msg(STDERR)
                    + msg(EXIT, struct.pack("<i", 0)))
    assert r.returncode == 1, r.stderr
    assert r.stdout == b"early\n"


@pytest.mark.parametrize("first", [msg(STDOUT, b"x"), msg(MsgType.HELLO, struct.pack("<I", 1))],
                         ids=["no-hello", "version-1"])
def test_client_exits_125_without_a_usable_hello(host: QrexecHost, first: bytes) -> None:
    r = run_against(host, first, hello_first=False)
    assert r.returncode == 125, r.stderr
    assert r.stdout == b""


def test_client_exits_255_when_the_service_side_vanishes(host: QrexecHost) -> None:
    r = run_against(host, msg(STDOUT, b"partial\n"))
    assert r.returncode == 255, r.stderr
    assert r.stdout == b"partial\n"


def test_client_takes_a_swapped_stdin_as_stdout(host: QrexecHost) -> None:
    r = run_against(host, msg(STDIN, b"a\n") + msg(STDIN, b"b\n") + msg(STDOUT)
                    + msg(STDERR) + msg(EXIT, struct.pack("<i", 7)))
    assert r.returncode == 7, r.stderr
    assert r.stdout == b"a\nb\n"
    assert r.stderr.decode().count("service sent MSG_DATA_STDIN") <= 1


def run_vm_against(host: QrexecHost, service: bytes, *, hello_first: bool = True
                   ) -> subprocess.CompletedProcess[bytes]:
    """work calls personal's test.Svc; personal is a fake agent whose "handler" answers with
    `service`."""
    world = World(host)
    world.domain("work", 5)
    target, agent = start_attacked_daemon(host, 4, name="personal", domid=6)
    proc = world.start_call("work", "personal", "test.Svc", stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return finish(proc, lambda: fake_handler(agent, target.domid, service, hello_first))


@pytest.mark.parametrize(("service", "hello_first"), [
    (msg(STDOUT, b"early\n") + msg(0x299), True),
    (msg(STDOUT, b"early\n") + HEADER.pack(STDOUT, 65537) + b"x" * 65537, True),
    (msg(MsgType.HELLO, struct.pack("<I", 1)), False),
], ids=["unknown-type", "oversize", "version-1"])
def test_client_vm_exits_1_on_a_broken_channel(host: QrexecHost, service: bytes,
                                               hello_first: bool) -> None:
    r = run_vm_against(host, service + msg(EXIT, struct.pack("<i", 0)), hello_first=hello_first)
    assert r.returncode == 1, r.stderr
    assert r.stdout == (b"early\n" if hello_first else b"")


def test_client_vm_exits_255_when_the_target_vanishes(host: QrexecHost) -> None:
    r = run_vm_against(host, msg(STDOUT, b"partial\n"))
    assert r.returncode == 255, r.stderr
    assert r.stdout == b"partial\n"


# -- dom0's service side facing a hostile calling VM -------------------------------------------
@pytest.mark.parametrize("junk", [msg(0x299), HEADER.pack(STDIN, 0xFFFFFFFF)],
                         ids=["unknown-type", "huge-length"])
def test_vm_breaking_a_call_to_dom0_ends_only_that_call(host: QrexecHost, junk: bytes) -> None:
    """work (a fake agent) calls dom0's test.Cat and breaks the data channel: that call ends
    without an exit code; work's daemon goes on answering its calls."""
    world = World(host)
    world.service("dom0", "test.Cat", "#!/bin/sh\nexec cat\n")
    env = {"QREXEC_POLICY_SOCKET": str(host.root / "no-policy.sock"),
           "QREXEC_SERVICE_PATH": str(world.rpc_dir("dom0"))}
    dom, agent = start_attacked_daemon(host, 4, name="work", domid=5, env=env,
                                       extra=[f"--policy-program={world.policy_program}"])

    def call(ident: bytes, stdin: bytes) -> list[tuple[int, bytes]]:
        with as_dom0_caller(dom, agent, b"test.Cat", ident) as chan:
            assert data_handshake(chan, 4) == 4
            chan.sendall(stdin)
            return split_messages(read_until_eof(chan))

    got = call(b"SOCKET11", msg(STDIN, b"before\n") + junk)
    assert EXIT not in [t for t, _ in got]
    assert "data channel broken" in dom.daemon_log.read_text()
    got = call(b"SOCKET12", msg(STDIN, b"still here\n") + msg(STDIN))
    assert b"".join(p for t, p in got if t == STDOUT) == b"still here\n"
    assert got[-1] == (EXIT, struct.pack("<i", 0))
    assert dom.daemon is not None and dom.daemon.poll() is None
