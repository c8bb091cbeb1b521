"""dom0 runs commands in a VM: qrexec-client -> qrexec-daemon -> qrexec-agent
(docs/reference/protocol.md#dom0-to-vm, docs/reference/protocol.md#just-exec)."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

from .fixtures.processes import Domain, QrexecHost, program, run_on_stdin_socket


def test_stdout_stderr_and_status(host: QrexecHost, work: Domain) -> None:
    r = host.client("-d", "work", "root:echo out; echo err >&2; exit 7")
    assert r.returncode == 7
    assert r.stdout == b"out\n"
    assert r.stderr == b"err\n"


@pytest.mark.parametrize("status", [0, 7, 255])
def test_exit_status_passthrough(host: QrexecHost, work: Domain, status: int) -> None:
    assert host.client("-d", "work", f"root:exit {status}").returncode == status


def test_signal_status(host: QrexecHost, work: Domain) -> None:
    r = host.client("-d", "work", "root:kill -9 $$")
    assert r.returncode == 128 + 9


def test_stdin_passthrough(host: QrexecHost, work: Domain) -> None:
    r = host.client("-d", "work", "root:tr a-z A-Z", input=b"hello world\n")
    assert r.returncode == 0
    assert r.stdout == b"HELLO WORLD\n"


def test_address_by_domid_and_uuid(host: QrexecHost, work: Domain) -> None:
    assert host.client("-d", "5", "root:echo x").stdout == b"x\n"
    assert host.client("-d", f"uuid:{work.uuid}", "root:echo y").stdout == b"y\n"


def test_default_user_is_replaced(host: QrexecHost, work: Domain) -> None:
    # the daemon's default user is root here (third positional)
    r = host.client("-d", "work", "DEFAULT:id -un")
    assert r.returncode == 0
    assert r.stdout == b"root\n"


def test_missing_user_is_125(host: QrexecHost, work: Domain) -> None:
    r = host.client("-d", "work", "no-such-user-xyz:true")
    assert r.returncode == 125


def test_daemon_not_running_is_125(host: QrexecHost) -> None:
    r = host.client("-d", "nosuchvm", "root:true")
    assert r.returncode == 125
    r = host.client("-E", "-d", "nosuchvm", "root:true")
    assert r.returncode == 125


def test_no_exit_code_option(host: QrexecHost, work: Domain) -> None:
    assert host.client("-E", "-d", "work", "root:exit 9").returncode == 0


def test_just_exec(host: QrexecHost, work: Domain) -> None:
    marker = host.root / "just-exec-ran"
    r = host.client("-e", "-d", "work", f"root:sleep 0.2; echo done > {marker}")
    assert r.returncode == 0
    assert r.stdout == b""
    # the process runs on independently of the call
    from .fixtures.processes import wait_for

    wait_for(marker.exists, 10, "just-exec command")


def test_local_program(host: QrexecHost, work: Domain) -> None:
    out = host.root / "local-out"
    local = f'echo ping; read line; echo "$line $QREXEC_REMOTE_DOMAIN" > {out}'
    r = host.client("-d", "work", "-l", local, "root:read x; echo pong-$x")
    assert r.returncode == 0
    assert out.read_text() == "pong-ping work\n"


def test_local_program_status_when_remote_is_zero(host: QrexecHost, work: Domain) -> None:
    r = host.client("-d", "work", "-l", "exit 3", "root:true")
    assert r.returncode == 3
    r = host.client("-d", "work", "-l", "exit 3", "root:exit 4")
    assert r.returncode == 4


def test_prefix_data(host: QrexecHost, work: Domain) -> None:
    r = host.client("-d", "work", "--prefix-data=PREFIX:", "root:cat", input=b"stdin")
    assert r.stdout == b"PREFIX:stdin"
    r = host.client("-d", "work", "-p", "A", "-p", "B", "root:cat")
    assert r.returncode == 2


def test_filter_escape_chars(host: QrexecHost, work: Domain) -> None:
    r = host.client("-t", "-T", "-d", "work", r"root:printf 'a\033b\tc\n'; printf 'e\001f' >&2")
    assert r.stdout == b"a_b\tc\n"
    assert r.stderr == b"e_f"


def test_stdin_eof_while_service_keeps_writing(host: QrexecHost, work: Domain) -> None:
    r = host.client("-d", "work", "root:cat >/dev/null; echo after-eof; sleep 0.2; echo more",
                    input=b"x" * 1000)
    assert r.stdout == b"after-eof\nmore\n"


def test_stdout_eof_while_service_keeps_reading(host: QrexecHost, work: Domain) -> None:
    target = host.root / "got"
    r = host.client("-d", "work", f"root:echo first; exec >&-; cat > {target}",
                    input=b"late input" * 1000)
    assert r.returncode == 0
    assert r.stdout == b"first\n"
    assert target.read_bytes() == b"late input" * 1000


def test_use_stdin_socket(host: QrexecHost, work: Domain) -> None:
    status, data = run_on_stdin_socket(
        [*program("qrexec-client"), f"--socket-dir={host.socket_dir}", "--use-stdin-socket",
         "-d", "work", "root:tr a-z A-Z"], host.env(0), b"abc")
    assert status == 0
    assert data == b"ABC"


def test_use_stdin_socket_rejects_a_pipe(host: QrexecHost) -> None:
    r = host.client("--use-stdin-socket", "-d", "work", "root:true", input=b"")
    assert r.returncode == 2


@pytest.mark.parametrize(
    ("args", "status"),
    [
        ([], 1),
        (["-d", "work"], 1),
        (["-e", "-l", "true", "-d", "work", "root:true"], 1),
        (["--bogus", "-d", "work", "root:true"], 1),
        (["-w", "x", "-d", "work", "root:true"], 1),
        (["-l", "true", "--use-stdin-socket", "-d", "work", "root:true"], 1),
    ],
)
def test_usage_errors(host: QrexecHost, args: list[str], status: int) -> None:
    assert host.client(*args).returncode == status


def _pattern(size: int) -> bytes:
    block = hashlib.sha256(b"pyqrexec").digest() * 2048  # 64 KiB, not all-zero
    return (block * (size // len(block) + 1))[:size]


def test_256_mib_to_service(host: QrexecHost, work: Domain) -> None:
    data = _pattern(256 << 20)
    r = host.client("-d", "work", "root:sha256sum", input=data, timeout=240)
    assert r.returncode == 0
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_256_mib_from_service(host: QrexecHost, work: Domain) -> None:
    src = host.root / "pattern"
    data = _pattern(256 << 20)
    src.write_bytes(data)
    r = host.client("-d", "work", f"root:cat {src}", timeout=240)
    assert r.returncode == 0
    assert len(r.stdout) == len(data)
    assert r.stdout == data


def test_both_directions_full_no_deadlock(host: QrexecHost, work: Domain) -> None:
    # the service writes 16 MiB before it reads anything; the caller sends 16 MiB
    size = 16 << 20
    r = host.client("-d", "work", f"root:head -c {size} /dev/zero; wc -c",
                    input=b"y" * size, timeout=120)
    assert r.returncode == 0
    assert len(r.stdout) == size + len(f"{size}\n")
    assert r.stdout.endswith(f"{size}\n".encode())


def test_agent_restart_under_running_daemon(host: QrexecHost, work: Domain) -> None:
    assert host.client("-d", "work", "root:echo one").stdout == b"one\n"
    work.stop_agent()
    work.start_agent()
    from .fixtures.processes import wait_for

    wait_for(lambda: "reconnected" in work.daemon_log.read_text(), 20, "daemon reconnect")
    assert work.daemon is not None and work.daemon.poll() is None
    assert host.client("-d", "work", "root:echo two").stdout == b"two\n"


def test_daemon_restart_under_running_agent(host: QrexecHost, work: Domain) -> None:
    """The daemon's end of the control channel is the agent's EOF: the agent keeps running,
    listens again, and serves the next daemon's calls (docs/reference/protocol.md)."""
    from .fixtures.processes import wait_for

    assert host.client("-d", "work", "root:echo one").stdout == b"one\n"
    work.stop_daemon()
    wait_for(lambda: "waiting for a new daemon" in work.agent_log.read_text(), 20,
             "the agent to see the daemon gone")
    assert work.agent is not None and work.agent.poll() is None
    work.start_daemon()
    assert host.client("-d", "work", "root:echo two").stdout == b"two\n"
    assert work.agent.poll() is None


def test_agent_ends_on_a_malformed_control_message(host: QrexecHost) -> None:
    """A message the control channel's rules refuse ends the agent (status 1, logged);
    a daemon that only goes away does not (test_daemon_restart_under_running_agent)."""
    from pyqrexec.protocol.constants import VCHAN_BASE_PORT
    from pyqrexec.protocol.messages import hello
    from pyqrexec.transport import vchan

    from .fixtures.processes import wait_for

    dom = host.domain("lone", 9)
    agent = dom.start_agent()
    sock = vchan.connect(str(host.vchan_dir), dom.domid, 0, VCHAN_BASE_PORT, 20,
                         pair_dirs=False)
    try:
        assert sock.recv(12) == hello(4)
        sock.sendall(hello(4))
        # a message type no daemon sends (docs/reference/protocol.md#refusals)
        sock.sendall(struct.pack("<II", 0x123, 0))
        wait_for(lambda: agent.poll() is not None, 20, "the agent to end")
    finally:
        sock.close()
    assert agent.returncode == 1
    assert "fatal error from daemon" in dom.agent_log.read_text()


def test_many_sequential_calls_reuse_ports(host: QrexecHost) -> None:
    # 260 calls > 256 ports: only works if every port is released and reused. The calls go
    # through the client library, whose bytes on the wire are qrexec-client's, so that the
    # test costs no interpreter start per call (and, a service rather than a command, no
    # login shell of the root agent's); a few -e calls by the CLI itself follow, whose
    # port is held until the handler reports.
    from pyqrexec.api import Dom0Client

    rpc = host.root / "svc-rpc"
    rpc.mkdir()
    (rpc / "test.True").write_text("#!/bin/sh\n")
    (rpc / "test.True").chmod(0o755)
    dom = host.domain("svc", 9)
    dom.agent_env = {"QREXEC_SERVICE_PATH": str(rpc)}
    dom.start()
    with Dom0Client(socket_dir=str(host.socket_dir), vchan_dir=str(host.vchan_dir),
                    own_domain=0) as client:
        for i in range(260):
            r = client.run_service("svc", "test.True", timeout=30)
            assert r.returncode == 0, (i, r.stderr)
    for _ in range(3):
        assert host.client("-e", "-d", "svc", "root:true").returncode == 0


@pytest.mark.parametrize(("agent_max", "client_max"), [(2, 4), (3, 4), (4, 2), (4, 3), (4, 4)])
def test_protocol_versions(host: QrexecHost, agent_max: int, client_max: int) -> None:
    dom = host.domain("work", 5)
    dom.agent_env = {"QREXEC_MAX_PROTOCOL_VERSION": str(agent_max)}
    dom.start()
    data = _pattern(1 << 20)
    r = host.client("-d", "work", "root:cat", input=data,
                    env={"QREXEC_MAX_PROTOCOL_VERSION": str(client_max)})
    assert r.returncode == 0
    assert r.stdout == data


def test_env_of_agent_is_not_leaked_into_fds(host: QrexecHost, work: Domain) -> None:
    # handler children must not hold the agent's control channel or other fds
    r = host.client("-d", "work", "root:ls /proc/self/fd | wc -l")
    assert int(r.stdout) <= 5, r.stdout
    assert os.path.exists(host.socket_dir / "qrexec.work")
