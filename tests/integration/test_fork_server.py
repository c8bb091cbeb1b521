"""qrexec-fork-server as a real process, driven as the agent drives it
(docs/reference/protocol.md#fork-server-socket).

The test plays both other parties: the agent (connects to the fork server's socket and sends
`qrexec_cmd_info`) and the caller (listens on the data vchan the handler connects to).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pwd
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyqrexec.agent.fork_client import Handover, connect_handover, prepare_handover
from pyqrexec.call.relay import run_caller
from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import CmdInfo, pack_cmd_info
from pyqrexec.services.rpcconfig import DEFAULT_CONFIG
from pyqrexec.transport import vchan

from .fixtures.processes import SRC, cleanup_dir, parent_pid, program, wait_for

#: the fork server's own domain (the VM it serves in)
DOMID = 7
VERSION = 4
_ports = itertools.count(600)

ECHO_SERVICE = """#!/bin/sh
printf 'argv='; printf '%s|' "$0" "$@"; echo
echo "remote=$QREXEC_REMOTE_DOMAIN arg=$QREXEC_SERVICE_ARGUMENT full=$QREXEC_SERVICE_FULL_NAME"
echo "agent_pid_set=${QREXEC_AGENT_PID:+yes}"
cat
echo to-stderr >&2
exit 3
"""



@dataclass
class ForkServer:
    root: Path
    socket_path: str
    vchan_dir: str
    services: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def env(self) -> dict[str, str]:
        return fork_server_env(self.root, self.vchan_dir, self.services)


def fork_server_env(root: Path, vchan_dir: str, services: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("QREXEC", "VCHAN", "QUBES_RPC_CONFIG"))}
    e.update(PYTHONPATH=SRC, VCHAN_DOMAIN=str(DOMID), VCHAN_SOCKET_DIR=vchan_dir,
             QREXEC_SERVICE_PATH=str(services), SHELL=str(root / "myshell"))
    return e


def start(root: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(root / "fork-server.log", "ab")  # noqa: SIM115 - handed to the child
    # its own process group: the serving child and its handlers are stopped with it
    proc = subprocess.Popen([*program("qrexec-fork-server"), *args], env=env, stdout=log,
                            stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return proc


@pytest.fixture
def server() -> Iterator[ForkServer]:
    # short paths: Unix socket names are limited to 107 bytes
    root = Path(tempfile.mkdtemp(prefix="qf", dir="/tmp"))
    vdir = root / "vchan"
    vdir.mkdir()
    services = root / "rpc"
    services.mkdir()
    (services / "test.Echo").write_text(ECHO_SERVICE)
    (services / "test.Echo").chmod(0o755)
    # $SHELL: /bin/sh under another name, which `$0` shows (argv0 = basename of $SHELL)
    (root / "myshell").symlink_to("/bin/sh")
    path = str(root / "fs.sock")
    Path(path).write_text("stale")  # a stale file is replaced
    proc = start(root, path, env=fork_server_env(root, str(vdir), services))
    try:
        # the parent exits 0 once the socket is ready
        assert proc.wait(30) == 0, (root / "fork-server.log").read_text()
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)
        probe.close()
        yield ForkServer(root, path, str(vdir), services, root / "fork-server.log", proc)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        cleanup_dir(root)


@dataclass
class Outcome:
    status: int | None
    stdout: bytes
    stderr: bytes
    #: the agent connection reached EOF after the call
    agent_eof: bool


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 65536):
        parts.append(chunk)
    os.close(fd)
    return b"".join(parts)


def agent_connect(srv: ForkServer, request: bytes) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(srv.socket_path)
    conn.sendall(request)
    return conn


def call(srv: ForkServer, command: bytes, stdin: bytes = b"",
         msgtype: int = MsgType.EXEC_CMDLINE) -> Outcome:
    """Send the request as the agent, serve the data channel as the caller (domain 0)."""
    port = next(_ports)
    listener, path = vchan.listen(srv.vchan_dir, 0, DOMID, port, pair_dirs=False)
    conn = agent_connect(srv, pack_cmd_info(CmdInfo(msgtype, 0, port, command + b"\0")))
    return finish_call(srv, conn, listener, path, stdin)


def finish_call(srv: ForkServer, conn: socket.socket, listener: socket.socket, path: str,
                stdin: bytes = b"") -> Outcome:
    channel = vchan.accept_one(listener, path, 20)
    in_r, in_w = os.pipe()
    os.write(in_w, stdin)
    os.close(in_w)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    messages: list[str] = []
    result = run_caller(channel, VERSION, in_r, out_w, messages.append, stderr_fd=err_w)
    channel.close()
    for fd in (in_r, out_w, err_w):
        try:
            os.close(fd)
        except OSError:
            pass  # closed by the relay at EOF
    conn.settimeout(20)
    eof = conn.recv(1) == b""
    conn.close()
    return Outcome(result.status, _read_all(out_r), _read_all(err_r), eof)


def test_service_call(server: ForkServer) -> None:
    out = call(server, b"QUBESRPC test.Echo+arg work", b"some input\n")
    assert out.status == 3, server.log_text()
    lines = out.stdout.decode().splitlines()
    assert lines[0] == f"argv={server.services}/test.Echo|arg|"
    assert lines[1] == "remote=work arg=arg full=test.Echo+arg"
    assert lines[2] == "agent_pid_set=yes"
    assert lines[3:] == ["some input"]
    assert out.stderr == b"to-stderr\n"
    assert out.agent_eof


def test_service_not_found(server: ForkServer) -> None:
    out = call(server, b"QUBESRPC test.Missing work")
    assert out.status == 127
    assert out.agent_eof
    assert "Service not found: test.Missing+" in server.log_text()


def test_shell_command_runs_with_shell_variable(server: ForkServer) -> None:
    out = call(server, b"echo $0; echo err >&2; tr a-z A-Z; exit 5", b"hello\n")
    assert out.status == 5, server.log_text()
    assert out.stdout == b"myshell\nHELLO\n"
    assert out.stderr == b"err\n"
    assert out.agent_eof


def test_runs_as_its_own_user(server: ForkServer) -> None:
    # the command has no USER: part and nothing switches users
    out = call(server, b"id -u")
    assert out.status == 0
    assert out.stdout == b"%d\n" % os.geteuid()


def test_rpc_config_is_not_read(server: ForkServer) -> None:
    # an rpc-config that would fail the call (syntax error) is not even read
    conf = server.root / "conf"
    conf.mkdir()
    (conf / "test.Echo").write_text(" broken\n")
    other = dataclasses.replace(server, socket_path=str(server.root / "fs-conf.sock"))
    proc = start(server.root, other.socket_path,
                 env=dict(server.env(), QUBES_RPC_CONFIG_PATH=str(conf)))
    try:
        assert proc.wait(30) == 0
        out = call(other, b"QUBESRPC test.Echo work")
        assert out.status == 3, server.log_text()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_just_exec(server: ForkServer) -> None:
    marker = server.root / "just-exec-ran"
    out = call(server, b"touch " + str(marker).encode(), msgtype=MsgType.JUST_EXEC)
    assert out.status == 0
    assert out.stdout == b""
    assert out.agent_eof
    wait_for(marker.exists, 10, "the just-exec command")


def test_handover_from_the_agent_side(server: ForkServer) -> None:
    """The agent's own functions against the real fork server."""
    port = next(_ports)
    listener, path = vchan.listen(server.vchan_dir, 0, DOMID, port, pair_dirs=False)
    handover = prepare_handover(server.socket_path, MsgType.EXEC_CMDLINE, 0, port,
                                b"someone:QUBESRPC test.Echo+x src", DEFAULT_CONFIG)
    assert handover is not None
    conn = connect_handover(handover)
    assert conn is not None
    out = finish_call(server, conn, listener, path, b"in\n")
    assert out.status == 3
    assert b"remote=src arg=x full=test.Echo+x" in out.stdout
    assert out.agent_eof


def test_agent_connection_stays_open_while_the_call_runs(server: ForkServer) -> None:
    port = next(_ports)
    listener, path = vchan.listen(server.vchan_dir, 0, DOMID, port, pair_dirs=False)
    conn = agent_connect(server, pack_cmd_info(CmdInfo(MsgType.EXEC_CMDLINE, 0, port,
                                                       b"cat\0")))
    channel = vchan.accept_one(listener, path, 20)
    conn.settimeout(0.3)
    with pytest.raises(TimeoutError):
        conn.recv(1)
    channel.close()  # the caller vanishes: the handler ends
    conn.settimeout(20)
    assert conn.recv(1) == b""


def _head(length: int, port: int = 0) -> bytes:
    return struct.pack("<iiiI", MsgType.EXEC_CMDLINE, 0, port, length)


REFUSED = {
    "empty": lambda port: _head(0, port),
    "too long": lambda port: _head(0x8000_0000, port) + b"x",
    "not terminated": lambda port: _head(22, port) + b"QUBESRPC test.Echo src",
    "interior NUL": lambda port: _head(23, port) + b"QUBESRPC test.Echo\0src\0",
    "no space after QUBESRPC": lambda port: _head(22, port) + b"QUBESRPCtest.Echo src\0",
    "no source": lambda port: _head(19, port) + b"QUBESRPC test.Echo\0",
    "empty source": lambda port: _head(20, port) + b"QUBESRPC test.Echo \0",
    "empty descriptor": lambda port: _head(14, port) + b"QUBESRPC  src\0",
    "long name": lambda port: _head(9 + 256 + 5, port) + b"QUBESRPC " + b"s" * 256 + b" src\0",
    "short cmdline": lambda port: _head(40, port) + b"echo\0",
    "short head": lambda port: _head(5, port)[:10],
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusal_closes_without_handler(server: ForkServer, name: str) -> None:
    port = next(_ports)
    listener, path = vchan.listen(server.vchan_dir, 0, DOMID, port, pair_dirs=False)
    try:
        conn = agent_connect(server, REFUSED[name](port))
        if name.startswith("short"):
            conn.shutdown(socket.SHUT_WR)
        conn.settimeout(20)
        try:
            assert conn.recv(1) == b""
        except ConnectionResetError:
            pass  # closed with our unread bytes pending: also a close
        conn.close()
        # no handler connects to the data channel
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
        os.unlink(path)
    assert "refused a request from the agent" in server.log_text()


def test_server_survives_refusals(server: ForkServer) -> None:
    conn = agent_connect(server, _head(0))
    conn.settimeout(20)
    assert conn.recv(1) == b""
    assert call(server, b"exit 9").status == 9


def test_more_than_one_argument_is_usage(tmp_path: Path) -> None:
    r = subprocess.run([*program("qrexec-fork-server"), str(tmp_path / "a"), "b"],
                       capture_output=True, env=dict(os.environ, PYTHONPATH=SRC), timeout=30)
    assert r.returncode == 1
    assert r.stderr == b"Usage: qrexec-fork-server [socket path]\n"
    assert not (tmp_path / "a").exists()


def test_cannot_bind_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "s.sock"
    r = subprocess.run([*program("qrexec-fork-server"), str(path)], capture_output=True,
                       env=dict(os.environ, PYTHONPATH=SRC), timeout=30)
    assert r.returncode == 1
    assert b"cannot listen on" in r.stderr


def test_default_socket_path() -> None:
    from pyqrexec.agent.fork_server import default_socket_path

    assert default_socket_path("alice") == "/var/run/qubes/qrexec-server.alice.sock"
    own = pwd.getpwuid(os.geteuid()).pw_name
    assert default_socket_path(None) == f"/var/run/qubes/qrexec-server.{own}.sock"


def test_serving_child_ignores_sigchld_and_sigpipe(server: ForkServer) -> None:
    # the serving process: in the group of the parent that exited, its parent outside it
    # (per-connection children, e.g. of the fixture's probe, may still be around)
    group = set()
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.getpgid(int(name)) == server.proc.pid:
                group.add(int(name))
        except ProcessLookupError:
            continue
    serving = [pid for pid in group if parent_pid(pid) not in group | {0}]
    assert len(serving) == 1, group
    status = Path(f"/proc/{serving[0]}/status").read_text()
    ignored = int(next(line for line in status.splitlines()
                       if line.startswith("SigIgn:")).split()[1], 16)
    for sig in (signal.SIGCHLD, signal.SIGPIPE):
        assert ignored & (1 << (sig - 1)), sig


def test_handover_path_uses_the_template(server: ForkServer) -> None:
    template = server.socket_path.replace("fs.sock", "%s.sock")
    os.symlink(server.socket_path, template % "fs2")
    h = prepare_handover(template, MsgType.EXEC_CMDLINE, 0, 1, b"fs2:true", DEFAULT_CONFIG)
    assert h == Handover(template % "fs2", pack_cmd_info(CmdInfo(0x200, 0, 1, b"true\0")))


def test_socket_is_private_to_its_user(server: ForkServer) -> None:
    # whoever can connect runs commands as the fork server's user
    assert os.stat(server.socket_path).st_mode & 0o777 == 0o600
    assert not [p for p in os.listdir(server.root) if p.endswith(".new")]
