"""Usage errors of qrexec-client-vm and qrexec-client (docs/reference/cli.md#qrexec-client-vm,
docs/reference/cli.md#qrexec-client), with `work`'s agent and
daemon running, so that each status is the usage error's and not a failed call's."""

from __future__ import annotations

import subprocess

import pytest

from .fixtures.processes import Domain, QrexecHost, program


def client_vm(dom: Domain, *args: str) -> subprocess.CompletedProcess[bytes]:
    argv = [*program("qrexec-client-vm"), "-a", dom.agent_socket, *args]
    return subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=dom.host.env(dom.domid))


def test_s75_client_vm_one_positional(work: Domain) -> None:
    assert client_vm(work, "work").returncode == 2


def test_s75_client_vm_bad_buffer_size(work: Domain) -> None:
    done = client_vm(work, "--buffer-size=abc", "work", "test.Svc")
    assert done.returncode == 1
    assert b"Bad buffer size: does not begin with a number" in done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["-d", "work"], b""),
    (["-e", "-l", "cat", "-d", "work", "DEFAULT:true"],
     b"ERROR: only one of -e, -l, -c can be specified"),
])
def test_s75_client_usage(host: QrexecHost, work: Domain, args: list[str],
                          message: bytes) -> None:
    done = host.client(*args, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert message in done.stderr
