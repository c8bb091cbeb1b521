"""A hostile agent speaks raw bytes to the real qrexec-daemon (docs/reference/protocol.md#hello,
docs/reference/protocol.md#control-channel-lifecycle, docs/reference/protocol.md#trigger-validation,
docs/reference/protocol.md#refusals).

The test is the agent: it listens on `vchan.42.0.512.sock`, accepts the daemon, and sends
HELLO and then whatever it likes.
"""

from __future__ import annotations

import struct
import threading
import time

import pytest

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import (
    HEADER,
    hello,
    pack_connection_terminated,
    pack_header,
    pack_trigger2,
    pack_trigger3,
    pack_trigger4,
)

from .fixtures.hostile import (
    HostileAgent,
    hostile_domain,
    read_until_eof,
    refused,
    socket_paths,
    start_attacked_daemon,
    wait_exit,
)
from .fixtures.processes import QrexecHost

IDENT = b"SOCKET7".ljust(32, b"\0")
#: an ident the daemon must refuse, used as the "are you still alive?" probe
PROBE = b"SOCKET9!".ljust(32, b"\0")


# -- raw builders: every field exactly as given ------------------------------------------
def raw2(service: bytes = b"qubes.Svc", target: bytes = b"dom0", ident: bytes = IDENT,
         length: int | None = None) -> bytes:
    body = struct.pack("<64s32s", service, target) + ident
    return pack_header(MsgType.TRIGGER_SERVICE, len(body) if length is None else length) + body


def raw3(name: bytes = b"qubes.Svc\0", target: bytes = b"dom0", ident: bytes = IDENT) -> bytes:
    body = struct.pack("<64s", target) + ident + name
    return pack_header(MsgType.TRIGGER_SERVICE3, len(body)) + body


def raw4(name: bytes = b"qubes.Svc\0", target: bytes = b"dom0", ident: bytes = IDENT,
         source: bytes = b"") -> bytes:
    body = struct.pack("<64s64s", source, target) + ident + name
    return pack_header(MsgType.TRIGGER_SERVICE4, len(body)) + body


def trigger(version: int, name: bytes, ident: bytes = IDENT) -> bytes:
    """The trigger of `version` whose service field holds `name` (v3/v4: the raw field,
    v2: NUL-padded into 64 bytes)."""
    if version == 2:
        return raw2(service=name.rstrip(b"\0") if name.endswith(b"\0") else name, ident=ident)
    return (raw3 if version == 3 else raw4)(name=name, ident=ident)


def probe(version: int) -> bytes:
    return trigger(version, b"qubes.Probe\0", PROBE)


def assert_alive_and_refusing(dom_agent: tuple[object, HostileAgent], version: int) -> None:
    """A second (refusable) message is answered too: the daemon kept running."""
    dom, agent = dom_agent
    agent.send(probe(version))
    assert agent.recv(40) == refused(PROBE)
    assert dom.daemon.poll() is None  # type: ignore[attr-defined]


# -- HELLO ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("announced", "reply"), [(2, 2), (3, 3), (4, 4), (7, 4), (0xFFFFFFFF, 4)])
def test_hello_reply_is_min_of_versions(host: QrexecHost, announced: int, reply: int) -> None:
    dom = hostile_domain(host)
    agent = HostileAgent(host, dom.domid)
    dom.start_daemon(wait=False)
    assert agent.handshake(announced) == reply
    dom.wait_daemon_ready()
    assert dom.daemon is not None and dom.daemon.poll() is None


@pytest.mark.parametrize(("setting", "reply"), [("3", 3), ("2", 2), ("5", 4), ("", 4)])
def test_hello_capped_by_own_max_version(host: QrexecHost, setting: str, reply: int) -> None:
    dom = hostile_domain(host)
    agent = HostileAgent(host, dom.domid)
    dom.start_daemon(wait=False, env={"QREXEC_MAX_PROTOCOL_VERSION": setting})
    assert agent.handshake(4) == reply
    dom.wait_daemon_ready()
    # the negotiated version is the one policed: its own trigger is fine, v4's is fatal
    agent.send(trigger(reply, b"qubes.Svc\0", PROBE))
    assert agent.recv(40) == refused(PROBE)
    if reply < 4:
        agent.send(raw4())
        assert wait_exit(dom) == 1


def test_hello_and_trigger_in_one_write(host: QrexecHost) -> None:
    """The daemon reads exactly the 12 HELLO bytes; what follows is the first message."""
    dom = hostile_domain(host)
    agent = HostileAgent(host, dom.domid)
    dom.start_daemon(wait=False)
    agent.accept()
    agent.send(hello(4) + raw4(ident=PROBE))
    assert agent.recv(12) == hello(4)
    assert agent.recv(40) == refused(PROBE)


def test_message_byte_by_byte(host: QrexecHost) -> None:
    dom, agent = start_attacked_daemon(host, 4)
    for b in raw4(name=b"+x\0", ident=PROBE):
        agent.send(bytes([b]))
        time.sleep(0.002)
    assert agent.recv(40) == refused(PROBE)
    assert_alive_and_refusing((dom, agent), 4)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (HEADER.pack(0x301, 4) + struct.pack("<I", 4), "HELLO"),
        (HEADER.pack(MsgType.HELLO, 5) + b"\4\0\0\0\0", "HELLO"),
        (HEADER.pack(MsgType.HELLO, 3) + b"\4\0\0", "HELLO"),
        (HEADER.pack(MsgType.TRIGGER_SERVICE4, 4) + b"\4\0\0\0", "HELLO"),
        (hello(1), "Incompatible agent protocol version (remote 1, local 4)"),
        (hello(0), "Incompatible agent protocol version (remote 0, local 4)"),
        (HEADER.pack(MsgType.HELLO, 4) + b"\4\0", "handshake"),  # EOF inside the HELLO
    ],
    ids=["type", "len5", "len3", "trigger", "v1", "v0", "short"],
)
def test_bad_agent_hello_is_fatal(host: QrexecHost, message: bytes, reason: str) -> None:
    dom = hostile_domain(host)
    agent = HostileAgent(host, dom.domid)
    dom.start_daemon(wait=False)
    agent.accept()
    agent.send(message)
    if reason == "handshake":
        agent.close()
    assert wait_exit(dom) == 1
    assert reason in dom.daemon_log.read_text()
    assert not any(p.exists() or p.is_symlink() for p in socket_paths(dom))


# -- messages that end the daemon (trigger validation's table, the first row of refusals) -----
T2, T3, T4, TERM = (MsgType.TRIGGER_SERVICE, MsgType.TRIGGER_SERVICE3, MsgType.TRIGGER_SERVICE4,
                    MsgType.CONNECTION_TERMINATED)
_FATAL: list[tuple[str, list[int], bytes, str]] = [
    # unknown types: anything outside 0x210-0x213, including daemon->agent types
    ("type-0x299", [2, 3, 4], pack_header(0x299, 0), "unknown mesage type 0x299"),
    ("type-0", [2, 3, 4], pack_header(0, 0), "unknown mesage type 0x0"),
    ("type-hello", [2, 3, 4], hello(4), "unknown mesage type 0x300"),
    ("type-exec", [2, 3, 4], pack_header(MsgType.EXEC_CMDLINE, 16) + bytes(16),
     "unknown mesage type 0x200"),
    ("type-refused", [2, 3, 4], refused(IDENT), "unknown mesage type 0x203"),
    ("type-data", [2, 3, 4], pack_header(MsgType.DATA_STDIN, 0), "unknown mesage type 0x190"),
    # trigger type not allowed at the negotiated version
    ("v2-struct-late", [3, 4], pack_trigger2(b"qubes.Svc", b"dom0", b"SOCKET7"), "0x210"),
    ("t3-at-v2", [2], pack_trigger3(b"qubes.Svc", b"dom0", b"SOCKET7"), "0x212"),
    ("t4-too-early", [2, 3], pack_trigger4(b"qubes.Svc", b"dom0", b"SOCKET7"), "0x213"),
    # wrong lengths, boundaries included
    ("t2-len127", [2], raw2(length=127), "length 127"),
    ("t2-len129", [2], raw2(length=129), "length 129"),
    ("t2-len0", [2], pack_header(T2, 0), "length 0"),
    ("t3-len96", [3, 4], pack_header(T3, 96) + bytes(96), "length 96"),
    ("t3-len0", [3, 4], pack_header(T3, 0), "length 0"),
    ("t3-len-max+1", [3, 4], pack_header(T3, 96 + 65001), "length 65097"),
    ("t4-len160", [4], pack_header(T4, 160) + bytes(160), "length 160"),
    ("t4-len96", [4], pack_header(T4, 96) + bytes(96), "length 96"),
    ("t4-len-max+1", [4], pack_header(T4, 160 + 65001), "length 65161"),
    ("t4-len-huge", [4], pack_header(T4, 0xFFFFFFFF), "length 4294967295"),
    ("term-len0", [2, 3, 4], pack_header(TERM, 0), "length 0"),
    ("term-len7", [2, 3, 4], pack_header(TERM, 7) + bytes(7), "length 7"),
    ("term-len9", [2, 3, 4], pack_header(TERM, 9) + bytes(9), "length 9"),
    ("term-len12", [2, 3, 4], pack_header(TERM, 12) + bytes(12), "length 12"),
    # TERMINATED port outside 513..768
    ("term-port512", [2, 3, 4], pack_connection_terminated(0, 512),
     "Invalid port in MSG_CONNECTION_TERMINATED"),
    ("term-port769", [2, 3, 4], pack_connection_terminated(43, 769),
     "Invalid port in MSG_CONNECTION_TERMINATED"),
    ("term-port0", [2, 3, 4], pack_connection_terminated(0, 0),
     "Invalid port in MSG_CONNECTION_TERMINATED"),
    ("term-port-max", [2, 3, 4], pack_connection_terminated(0, 0xFFFFFFFF),
     "Invalid port in MSG_CONNECTION_TERMINATED"),
]
_FATAL_CASES = [
    pytest.param(version, message, reason, id=f"{name}-v{version}")
    for name, versions, message, reason in _FATAL
    for version in versions
]


@pytest.mark.parametrize(("version", "message", "reason"), _FATAL_CASES)
def test_fatal_agent_message(host: QrexecHost, version: int, message: bytes,
                             reason: str) -> None:
    """S55 (a trigger of the wrong version, a v2 trigger of len 127) and the exits of S53
    and S56: status 1, nothing answered."""
    dom, agent = start_attacked_daemon(host, version)
    agent.send(message)
    assert wait_exit(dom) == 1
    assert reason in dom.daemon_log.read_text()
    # nothing was answered, and the sockets are gone
    assert read_until_eof(agent.sock) == b""
    assert not any(p.exists() or p.is_symlink() for p in socket_paths(dom))


_SHORT: list[tuple[str, int, bytes]] = [
    ("t2", 2, raw2()[:8 + 100]),
    ("t3", 3, raw3()[:8 + 96]),
    ("t4", 4, raw4()[:8 + 150]),
    ("t4-header-only", 4, raw4()[:8]),
    ("term", 4, pack_connection_terminated(0, 513)[:12]),
    ("term-v2", 2, pack_connection_terminated(0, 513)[:8]),
    # EOF inside the header is a short read too; only EOF between messages is a disconnect
    ("header-3", 4, raw4()[:3]),
    ("header-7-v2", 2, raw2()[:7]),
]


@pytest.mark.parametrize(("version", "message"), [pytest.param(v, m, id=n) for n, v, m in _SHORT])
def test_short_read_is_fatal(host: QrexecHost, version: int, message: bytes) -> None:
    """EOF in the middle of a message: exit 1, no reconnect (refusals: "short read")."""
    dom, agent = start_attacked_daemon(host, version)
    agent.send(message)
    agent.close()
    assert wait_exit(dom) == 1
    assert "short read" in dom.daemon_log.read_text()
    assert "qrexec-agent has reconnected" not in dom.daemon_log.read_text()


@pytest.mark.parametrize("version", [3, 4])
def test_longest_service_field_is_processed(host: QrexecHost, version: int) -> None:
    """len = head + 65000 (S54): read completely and answered, not fatal."""
    dom, agent = start_attacked_daemon(host, version)
    name = b"a" * 64999 + b"\0"
    agent.send((raw3 if version == 3 else raw4)(name=name, ident=PROBE))
    assert agent.recv(40) == refused(PROBE)
    assert_alive_and_refusing((dom, agent), version)


# -- messages answered with MSG_SERVICE_REFUSED (trigger validation, steps 4-7) -------------
_BAD_IDENTS = {
    "bad-char": b"SOCKET1!".ljust(32, b"\0"),
    "non-ascii": b"SOCKET\x80".ljust(32, b"\0"),
    "slash": b"../SOCKET".ljust(32, b"\0"),
    "after-nul": b"SOCKET1\0X".ljust(32, b"\0"),
    "after-nul-last": b"SOCKET1".ljust(31, b"\0") + b"X",
    "no-nul": b"A" * 32,
    "no-nul-socket": b"SOCKET1" + b"9" * 25,
}
_REFUSE: list[tuple[str, list[int], bytes, bytes, str]] = [
    *[(f"ident-{n}", [2, 3, 4], b"qubes.Svc\0", ident, "invalid ident")
      for n, ident in _BAD_IDENTS.items()],
    ("no-nul", [3, 4], b"qubes.Svc", IDENT, "Service name not NUL-terminated"),
    ("interior-nul", [3, 4], b"qubes.Svc\0x\0", IDENT,
     "Service name contains NUL byte at offset 9"),
    ("leading-nul", [3, 4], b"\0qubes.Svc\0", IDENT, "Service name contains NUL byte at offset 0"),
    ("double-nul", [3, 4], b"qubes.Svc\0\0", IDENT, "Service name contains NUL byte at offset 9"),
    ("empty", [2, 3, 4], b"\0", IDENT, "empty service"),
    ("plus", [2, 3, 4], b"+\0", IDENT, "starting with +"),
    ("plus-arg", [2, 3, 4], b"+a\0", IDENT, "starting with +"),
    ("v2-nul-then-text", [2], b"\0a", IDENT, "empty service"),
    ("v2-64-bytes", [2], b"+" * 64, IDENT, "starting with +"),
]
_REFUSE_CASES = [
    pytest.param(version, name_field, ident, reason, id=f"{name}-v{version}")
    for name, versions, name_field, ident, reason in _REFUSE
    for version in versions
]


@pytest.mark.parametrize(("version", "name", "ident", "reason"), _REFUSE_CASES)
def test_refused_with_raw_ident(host: QrexecHost, version: int, name: bytes, ident: bytes,
                                reason: str) -> None:
    """S51 (a NUL inside or missing at the end of the service field), S50, and S52's
    answers: MSG_SERVICE_REFUSED carrying the ident as received."""
    dom, agent = start_attacked_daemon(host, version)
    agent.send(trigger(version, name, ident))
    assert agent.recv(40) == HEADER.pack(MsgType.SERVICE_REFUSED, 32) + ident
    assert reason in dom.daemon_log.read_text()
    assert_alive_and_refusing((dom, agent), version)


@pytest.mark.parametrize("version", [2, 3, 4])
@pytest.mark.parametrize("ident", [IDENT, bytes(32)], ids=["socket", "empty-ident"])
def test_valid_trigger_without_policy_is_refused(host: QrexecHost, version: int,
                                                 ident: bytes) -> None:
    """Nothing can allow the call here: whatever asks the policy, a REFUSED comes back,
    and the daemon survives. An empty ident is valid
    (docs/reference/protocol.md#request-idents)."""
    dom, agent = start_attacked_daemon(host, version)
    agent.send(trigger(version, b"qubes.Svc+arg\0", ident))
    t, payload = agent.recv_message()
    assert (t, payload) == (MsgType.SERVICE_REFUSED, ident)
    assert "invalid ident" not in dom.daemon_log.read_text()
    assert_alive_and_refusing((dom, agent), version)


def test_trigger3_accepted_at_version_4(host: QrexecHost) -> None:
    dom, agent = start_attacked_daemon(host, 4)
    agent.send(raw3(name=b"+x\0", ident=PROBE))
    assert agent.recv(40) == refused(PROBE)
    assert dom.daemon is not None and dom.daemon.poll() is None


def test_many_refusals_in_one_write(host: QrexecHost) -> None:
    """Back-to-back messages in one segment are each handled, in order."""
    dom, agent = start_attacked_daemon(host, 4)
    idents = [f"X{i}!".encode().ljust(32, b"\0") for i in range(50)]
    agent.send(b"".join(raw4(ident=i) for i in idents))
    assert agent.recv(40 * 50) == b"".join(refused(i) for i in idents)
    assert_alive_and_refusing((dom, agent), 4)


# -- a good domain is unaffected (2) --------------------------------------------------------
@pytest.mark.parametrize("outcome", ["dies", "refuses"])
def test_other_domain_unaffected(host: QrexecHost, outcome: str) -> None:
    good = host.domain("good", 7).start()
    dom, agent = start_attacked_daemon(host, 4)
    results: dict[str, object] = {}

    def call() -> None:
        results["r"] = host.client("-d", "good", "root:sleep 0.5; echo ok")

    caller = threading.Thread(target=call)
    caller.start()
    try:
        if outcome == "dies":
            agent.send(pack_header(0x299, 0))
            assert wait_exit(dom) == 1
        else:
            for _ in range(20):
                agent.send(raw4(ident=PROBE))
                assert agent.recv(40) == refused(PROBE)
    finally:
        caller.join(60)
    r = results["r"]
    assert r.returncode == 0, r  # type: ignore[attr-defined]
    assert r.stdout == b"ok\n"  # type: ignore[attr-defined]
    assert good.daemon is not None and good.daemon.poll() is None
    # and again, after the attack
    assert host.client("-d", "good", "root:echo ok").stdout == b"ok\n"
