"""A chain of three hosts (docs/remote.md): work on A calls vault on C through B. A knows
C's vault as `vault-c` (on B), B relays it on with a second relay; each host's policy
decides, C seeing `work` as its RemoteVM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fixtures.remote import ECHO, RemoteHost, join, needs_ssh

pytestmark = needs_ssh

A_CONFIG = """\
[domains.work]
autostart = true
[domains.relay-a]
[domains.vault-c]
type = "RemoteVM"
relayvm = "relay-a"
"""
B_CONFIG = """\
[domains.relay-b]
[domains.relay-bc]
[domains.work]
type = "RemoteVM"
relayvm = "relay-b"
[domains.vault-c]
type = "RemoteVM"
relayvm = "relay-bc"
remote_name = "vault"
"""
C_CONFIG = """\
[domains.relay-c]
[domains.vault]
[domains.work]
type = "RemoteVM"
relayvm = "relay-c"
"""


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[RemoteHost, RemoteHost, RemoteHost]]:
    c = RemoteHost(C_CONFIG, {"relay-c": {}, "vault": {"test.Echo": ECHO}},
                   "test.Echo * work vault allow\n", as_account=True)
    b = RemoteHost(B_CONFIG, {"relay-b": {}, "relay-bc": {}},
                   "test.Echo * work vault-c allow\n", as_account=True)
    a = RemoteHost(A_CONFIG, {"work": {}, "relay-a": {}},
                   "test.Echo * work vault-c allow\n", as_account=False)
    try:
        b.start_sshd()
        c.start_sshd()
        join(a, "relay-a", "vault-c", b, "relay-b", "work")
        join(b, "relay-bc", "vault-c", c, "relay-c", "work")
        for w in (c, b, a):
            w.up()
        yield a, b, c
    finally:
        for w in (a, b, c):
            w.close()


def test_a_to_c_through_b(chain: tuple[RemoteHost, RemoteHost, RemoteHost]) -> None:
    a, b, c = chain
    out = a.host("call", "work", "vault-c", "test.Echo", input=b"three hosts")
    assert out.returncode == 0, (out.stderr, a.log(), b.log(), c.log())
    assert out.stdout == b"in test.Echo+ from work\nthree hosts"
    assert "test.Echo+: work -> vault-c: allowed to vault-c" in (
        b.state / "log/policy-daemon.log").read_text()
