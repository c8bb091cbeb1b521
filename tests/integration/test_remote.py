"""Calls across hosts (docs/remote.md): host A's `work` calls `vault` on host B through the
RemoteVM `vault-b`, A's relay `relay-a`, a real sshd and B's relay `relay-b`; B's policy
decides again, seeing `work` as a RemoteVM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from pyqrexec.qubesd.client import QubesdError
from pyqrexec.remote.sshproxy import ssh_argv

from .fixtures.processes import program, wait_for
from .fixtures.remote import ECHO, SSHD, STATUS, RemoteHost, account, join, needs_ssh

pytestmark = needs_ssh

A_CONFIG = """\
[domains.work]
autostart = true
[domains.relay-a]
[domains.vault-b]
type = "RemoteVM"
relayvm = "relay-a"
remote_name = "vault"
"""
A_POLICY = """\
test.Echo * work vault-b allow
test.Status * work vault-b allow
test.Tagged * work vault-b allow
test.Missing * work vault-b allow
test.DenyB * work vault-b allow
test.Big * work vault-b allow
test.Endless * work vault-b allow
test.Echo * work @default allow target=vault-b
test.Echo * @anyvm @anyvm deny
"""
B_CONFIG = """\
[domains.relay-b]
[domains.relay-b2]
[domains.vault]
autostart = true
[domains.local]
[domains.work]
type = "RemoteVM"
relayvm = "relay-b"
[domains.stranger]
type = "RemoteVM"
relayvm = "relay-b2"
"""
B_POLICY = """\
test.Echo * work vault allow
test.Big * work vault allow
test.Endless * work vault allow
test.Status * @type:RemoteVM vault allow
test.Tagged * @tag:relayvm-relay-b vault allow
test.Missing * work vault allow
test.DenyB * work vault deny
test.Echo * @anyvm @anyvm deny
"""
BIG = "#!/bin/sh\nexec cat\n"
ENDLESS = "#!/bin/sh\nexec yes qrexec\n"
VAULT = {"test.Echo": ECHO, "test.Tagged": ECHO, "test.Status": STATUS, "test.DenyB": ECHO,
         "test.Big": BIG, "test.Endless": ENDLESS}


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[RemoteHost, RemoteHost]]:
    b = RemoteHost(B_CONFIG, {"relay-b": {}, "relay-b2": {}, "vault": VAULT, "local": {}},
                   B_POLICY, as_account=True)
    a = RemoteHost(A_CONFIG, {"work": {}, "relay-a": {}}, A_POLICY, as_account=False)
    try:
        b.start_sshd()
        join(a, "relay-a", "vault-b", b, "relay-b", "work")
        b.up()
        a.up()
        yield a, b
    finally:
        a.close()
        b.close()


def call(a: RemoteHost, service: str, data: bytes = b"", target: str = "vault-b",
         timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return a.host("call", "work", target, service, input=data, timeout=timeout)


def test_echo_reaches_vault_as_work(hosts: tuple[RemoteHost, RemoteHost]) -> None:
    a, b = hosts
    out = call(a, "test.Echo", b"hello\n")
    assert out.returncode == 0, (out.stderr, a.log(), b.log())
    assert out.stdout == b"in test.Echo+ from work\nhello\n"
    # the relays were halted: A's policy autostarted relay-a, B's forced command relay-b
    assert a.domains()["relay-a"]["state"] == "Running"
    assert b.domains()["relay-b"]["state"] == "Running"


def test_redirected_target_reaches_the_transport_resolved(
        hosts: tuple[RemoteHost, RemoteHost]) -> None:
    a, _ = hosts
    out = call(a, "test.Echo", b"x", target="@default")
    assert (out.returncode, out.stdout) == (0, b"in test.Echo+ from work\nx"), out.stderr


def test_16_mib_each_way(hosts: tuple[RemoteHost, RemoteHost]) -> None:
    a, _ = hosts
    data = os.urandom(1 << 20) * 16
    out = call(a, "test.Big", data, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout) == len(data) and out.stdout == data


@pytest.mark.parametrize(("service", "status"), [
    ("test.Status", 42), ("test.Status+0", 0), ("test.Status+3", 3),
    ("test.Missing", 127), ("test.DenyB", 126), ("test.NotAllowedOnA", 126)])
def test_exit_statuses(hosts: tuple[RemoteHost, RemoteHost], service: str,
                       status: int) -> None:
    a, _ = hosts
    out = call(a, service)
    assert out.returncode == status, (out.stderr, a.log())


def test_rules_by_type_and_relay_tag(hosts: tuple[RemoteHost, RemoteHost]) -> None:
    """test.Status is allowed on B for @type:RemoteVM, test.Tagged for @tag:relayvm-relay-b."""
    a, _ = hosts
    assert call(a, "test.Status+0").returncode == 0
    out = call(a, "test.Tagged", b"t")
    assert (out.returncode, out.stdout) == (0, b"in test.Tagged+ from work\nt"), out.stderr


def test_b_decides_whatever_a_allows(hosts: tuple[RemoteHost, RemoteHost]) -> None:
    """A allows test.DenyB; B's deny stands, and B's log names the RemoteVM source."""
    a, b = hosts
    assert call(a, "test.DenyB").returncode == 126
    log = (b.state / "log/policy-daemon.log").read_text()
    # the log names the caller (the relay); the rule that matched is the one naming work
    assert "test.DenyB+: relay-b -> vault: denied: denied by policy " in log
    assert log.rstrip().endswith("30-remote.policy:7")


def remote_processes(a: RemoteHost, b: RemoteHost) -> list[str]:
    """The transport's processes of A (ssh with A's relay files) and B's forced commands."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (str(a.dir) in cmd and "ssh " in cmd) or "--source-qube=work" in cmd or (
                "remote accept" in cmd and str(b.state) in cmd):
            found.append(f"{pid}: {cmd}")
    return found


def test_endless_output_ends_when_the_caller_goes(
        hosts: tuple[RemoteHost, RemoteHost]) -> None:
    """B's service writes for ever; the caller reads 1 MiB and is killed: every process of
    the call ends, on both sides, and A serves the next call."""
    a, b = hosts
    proc = subprocess.Popen(a.argv("call", "work", "vault-b", "test.Endless"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=a.env(),
                            start_new_session=True)
    assert proc.stdout is not None
    got = proc.stdout.read(1 << 20)
    assert got == (b"qrexec\n" * ((1 << 20) // 7 + 1))[:1 << 20]
    os.killpg(proc.pid, 9)
    proc.wait()
    proc.stdout.close()
    try:
        wait_for(lambda: not remote_processes(a, b), 20, "the call's processes ending")
    except AssertionError:
        raise AssertionError(remote_processes(a, b)) from None
    assert call(a, "test.Echo", b"after").stdout.endswith(b"after")


def started(w: RemoteHost, name: str) -> None:
    try:
        w.qubesd("admin.vm.Start", name)
    except QubesdError as err:
        assert err.exc_type == "QubesVMNotHaltedError", err


@pytest.mark.parametrize(("caller", "claimed", "reason"), [
    ("relay-b", "local", "local: requested source is only authorized for RemoteVM"),
    ("relay-b", "stranger", "relay-b is not a relay for stranger"),
    ("relay-b", "nosuch", "unknown requested source qube 'nosuch'"),
    ("relay-b", "dom0", "dom0: requested source is only authorized for RemoteVM"),
    ("relay-b", "@adminvm", "unknown requested source qube '@adminvm'"),
    ("relay-b", "uuid:" + "1" * 8, "unknown requested source qube 'uuid:11111111'"),
    ("relay-b", "wo rk", "unknown requested source qube 'wo_rk'"),
    ("relay-b", "wo/rk", "unknown requested source qube 'wo_rk'"),
    ("relay-b", "wo+rk", "unknown requested source qube 'wo_rk'"),
    ("relay-b", "w\xf6rk", "unknown requested source qube 'w__rk'"),
    ("local", "work", "local is not a relay for work"),
])
def test_compromised_relay_claims(hosts: tuple[RemoteHost, RemoteHost], caller: str,
                                  claimed: str, reason: str) -> None:
    """Whatever a relay (or any qube) of B claims with --source-qube, B's policy checks it:
    the refusals upstream's policy gives, logged; the call is refused (126)."""
    a, b = hosts
    started(b, caller)
    out = b.in_domain(caller, [*program("qrexec-client-vm"), "--agent-socket={AGENT}",
                               f"--source-qube={claimed}", "vault", "test.Echo"], input=b"")
    assert out.returncode == 126, out.stderr
    line = f"test.Echo: {caller} -> vault: denied: {reason}"

    def log() -> str:
        return (b.state / "log/policy-daemon.log").read_text(errors="replace")

    # the refusal may reach the caller before the policy daemon's log line is written
    with contextlib.suppress(AssertionError):
        wait_for(lambda: line in log(), 10, "the refusal's log line")
    assert line in log(), log()
    assert call(a, "test.Echo", b"still").stdout.endswith(b"still")


def relay_ssh(a: RemoteHost, b: RemoteHost, command: str) -> subprocess.CompletedProcess[bytes]:
    """relay-a's own key, used by hand with any command: what a compromised relay can do."""
    air = a.dir / "relay-a/etc/qubesair"
    return subprocess.run(ssh_argv(air, "vault-b", command), input=b"", capture_output=True,
                          timeout=60)


@pytest.mark.parametrize("command", [
    "stranger vault test.Echo", "local vault test.Echo", "dom0 vault test.Echo",
    "nosuch vault test.Echo", "work vault test.Echo; id", "work vault",
    "work vault test.Echo\x1b[2J", "work vault test.Echo+$(id)",
])
def test_key_claims_what_it_is_not_pinned_to(hosts: tuple[RemoteHost, RemoteHost],
                                            command: str) -> None:
    """relay-a's key is pinned to `work`: any other source, or any other shape of request,
    is refused by B's forced command before anything runs in B's relay."""
    a, b = hosts
    before = (b.state / "log/policy-daemon.log").read_text(errors="replace")
    out = relay_ssh(a, b, command)
    assert out.returncode == 126, out
    # (sshd may say first that the test account has no home directory)
    last = out.stderr.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    assert last.startswith(b"qrexec-host: remote: refused: "), out.stderr
    assert (b.state / "log/policy-daemon.log").read_text(errors="replace") == before


def test_pinned_source_by_hand_still_meets_bs_policy(
        hosts: tuple[RemoteHost, RemoteHost]) -> None:
    a, b = hosts
    out = relay_ssh(a, b, "work vault test.Echo+")
    assert (out.returncode, out.stdout) == (0, b"in test.Echo+ from work\n")
    assert relay_ssh(a, b, "work vault test.DenyB+").returncode == 126


def test_bad_exit_codes_and_escapes_from_the_remote_side(
        hosts: tuple[RemoteHost, RemoteHost]) -> None:
    """A remote service's 255 is indistinguishable from ssh's own failure: status 1 and the
    transport's line (docs/remote.md); escape sequences are data, passed as they are."""
    a, _ = hosts
    assert call(a, "test.Status+255").returncode == 1
    out = call(a, "test.Big", b"\x1b[2J\x1b]0;title\x07")
    assert out.stdout == b"\x1b[2J\x1b]0;title\x07"


def test_sshd_killed_mid_call(hosts: tuple[RemoteHost, RemoteHost]) -> None:
    """Every sshd process of B killed while a call runs: the caller ends non-zero within 10 s
    and no process of the call is left on either side. (Last: sshd is restarted.)"""
    a, b = hosts
    proc = subprocess.Popen(a.argv("call", "work", "vault-b", "test.Big"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=a.env())
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"x" * 1000)
    proc.stdin.flush()
    assert proc.stdout.read(1000) == b"x" * 1000
    for pid in sshd_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    started_at = time.monotonic()
    status = proc.wait(10)
    assert status != 0 and time.monotonic() - started_at < 10
    proc.stdin.close()
    proc.stdout.close()
    try:
        wait_for(lambda: not remote_processes(a, b), 20, "the call's processes ending")
    except AssertionError:
        raise AssertionError(remote_processes(a, b)) from None
    assert b.sshd is not None
    b.sshd.wait()
    b.start_sshd()
    assert call(a, "test.Echo", b"again").stdout.endswith(b"again")


def sshd_processes() -> list[str]:
    """Every sshd process of the test account: the listener and each connection's (whose
    command lines sshd rewrites)."""
    sshd = os.path.realpath(SSHD or "")
    uid = account().pw_uid
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/exe") == sshd and os.stat(
                        f"/proc/{pid}").st_uid == uid:
                    found.append(pid)
    return found
