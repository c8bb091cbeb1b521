"""Calls across hosts (docs/remote.md): host A's `work` calls `vault` on host B through the
RemoteVM `vault-b`, A's relay `relay-a`, a real sshd and B's relay `relay-b`; B's policy
decides again, seeing `work` as a RemoteVM."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from .harness import wait_for
from .remote_world import ECHO, STATUS, RemoteHost, join, needs_ssh

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
