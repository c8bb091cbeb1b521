"""Starting real services from temporary directories
(docs/reference/services.md#socket-services, docs/reference/services.md#executable-services,
docs/reference/services.md#waiting-for-the-session)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqrexec.protocol.cmdline import parse_command
from pyqrexec.services.session import run_session_waiter, start_session_waiter
from pyqrexec.services.spawn import (
    Detached,
    Executor,
    Failed,
    SpawnContext,
    Started,
    prepare_command,
    start_command,
)
from pyqrexec.system.environment import Environment
from tests.descriptors import open_fds, opened_since

ENV_SERVICE = """#!/bin/sh
printf 'argv='; printf '%s|' "$0" "$@"; echo
env | grep '^QREXEC' | sort
cat
echo to-stderr >&2
exit 3
"""


@pytest.fixture
def services() -> Iterator[Path]:
    # world-readable, so that services also run after a switch to an unprivileged user
    directory = Path(tempfile.mkdtemp(prefix="pyqrexec-services-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def add(directory: Path, name: str, text: str, mode: int = 0o755) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(mode)
    return path


def context(
    directory: Path, executor: Executor = Executor.USER_AGENT, **kw: object
) -> SpawnContext:
    messages: list[str] = []
    defaults: dict[str, object] = {"handler_pid": 4242, "log": messages.append}
    if executor is Executor.USER_AGENT:
        defaults["own_user"] = "root"
    defaults.update(kw)
    # `environ=`: what the service inherits instead of this process's environment
    environ = defaults.pop("environ", None)
    env = Environment.current() if environ is None else Environment(
        {os.fsdecode(k): os.fsdecode(v) for k, v in environ.items()})  # type: ignore[attr-defined]
    return SpawnContext(executor, [str(directory)], env, **defaults)  # type: ignore[arg-type]


def start(ctx: SpawnContext, command: bytes, user: str = "root") -> Started | Detached | Failed:
    return start_command(parse_command(command), user, ctx)


def finish(started: Started | Detached | Failed, stdin: bytes = b"") -> tuple[bytes, bytes, int]:
    """Feed stdin, collect stdout and stderr, reap: what a relay would do."""
    assert isinstance(started, Started), started
    try:
        started.stdin.sendall(stdin)
        started.stdin.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the service exited without reading; a relay drops the input too
    err_chunks: list[bytes] = []

    def drain_stderr() -> None:
        assert started.stderr is not None
        while chunk := os.read(started.stderr, 65536):
            err_chunks.append(chunk)
        os.close(started.stderr)

    reader = threading.Thread(target=drain_stderr)
    if started.stderr is not None:
        reader.start()
    out = b""
    while chunk := started.stdout.recv(65536):
        out += chunk
    if started.stderr is not None:
        reader.join()
    started.stdin.close()
    started.stdout.close()
    status = 0
    if started.pid is not None:
        try:
            _, wait_status = os.waitpid(started.pid, 0)
            status = os.waitstatus_to_exitcode(wait_status)
        except ChildProcessError:
            status = -1  # reaped automatically while SIGCHLD was ignored
    return out, b"".join(err_chunks), status


def test_executable_argv_env_stdio(services: Path) -> None:
    path = add(services, "test.Env", ENV_SERVICE)
    out, err, status = finish(start(context(services), b"QUBESRPC test.Env+arg work"), b"input\n")
    assert status == 3
    assert err == b"to-stderr\n"
    lines = out.decode().splitlines()
    assert lines[0] == f"argv={path}|arg|"
    assert lines[1:] == [
        "QREXEC_AGENT_PID=4242",
        "QREXEC_REMOTE_DOMAIN=work",
        "QREXEC_REQUESTED_TARGET_TYPE=",
        "QREXEC_SERVICE_ARGUMENT=arg",
        "QREXEC_SERVICE_FULL_NAME=test.Env+arg",
        "input",
    ]


def test_environment_hygiene(services: Path) -> None:
    add(services, "test.Env", ENV_SERVICE)
    base = {
        b"PATH": os.environb[b"PATH"],
        b"QREXEC_SERVICE_ARGUMENT": b"%bad",
        b"QREXEC_REQUESTED_TARGET": b"%bad",
        b"QREXECFOO": b"1",
        b"QREXEC_SERVICE_PATH": b"/somewhere",
    }
    ctx = context(services, environ=base)
    out, _, _ = finish(start(ctx, b"QUBESRPC test.Env dom0"))
    assert out.decode().splitlines()[1:] == [
        "QREXEC_AGENT_PID=4242",
        "QREXEC_REMOTE_DOMAIN=dom0",
        "QREXEC_REQUESTED_TARGET_TYPE=",
        "QREXEC_SERVICE_FULL_NAME=test.Env",
        "QREXEC_SERVICE_PATH=/somewhere",
    ]


def test_dom0_four_tokens_and_inherited_stderr(services: Path) -> None:
    add(services, "test.Env", ENV_SERVICE.replace("echo to-stderr >&2\n", ""))
    started = start(context(services, Executor.DOM0), b"QUBESRPC test.Env+ src keyword adminvm")
    assert isinstance(started, Started) and started.stderr is None
    out, _, status = finish(started)
    assert status == 3
    assert "QREXEC_REQUESTED_TARGET_KEYWORD=adminvm" in out.decode().splitlines()
    assert "QREXEC_REQUESTED_TARGET_TYPE=keyword" in out.decode().splitlines()


# exec, so that the shell's own signal handling while waiting for a child does not show
FDS_AND_SIGNALS = """#!/bin/sh
echo $(ls /proc/self/fd)
exec awk '/^Sig(Blk|Ign)/ { printf "%s ", $2 } END { print "" }' /proc/self/status
"""


def test_descriptors_closed_and_signals_default(services: Path) -> None:
    add(services, "test.Fds", FDS_AND_SIGNALS)
    leaked_read, leaked_write = os.pipe()
    os.set_inheritable(leaked_read, True)
    # Python itself ignores SIGPIPE; an agent may ignore SIGCHLD and block signals
    old_chld = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
    try:
        started = start(context(services), b"QUBESRPC test.Fds src")
    finally:
        signal.signal(signal.SIGCHLD, old_chld)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(leaked_read)
        os.close(leaked_write)
    out, _, _ = finish(started)
    fd_line, signal_line = out.decode().splitlines()
    # 1 is the command substitution's pipe, 3 the directory being listed
    assert fd_line == "0 1 2 3"
    blocked, ignored_hex = signal_line.split()
    assert blocked == "0" * 16
    ignored = int(ignored_hex, 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), "SIGPIPE ignored"
    assert not ignored & (1 << (signal.SIGCHLD - 1)), "SIGCHLD ignored"
    # and SIGXFSZ, which Python ignores too: a service over its file size limit dies of it
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    assert not ignored & (1 << (signal.SIGXFSZ - 1)), "SIGXFSZ ignored"


def test_not_found_is_failed_127(services: Path) -> None:
    assert start(context(services), b"QUBESRPC test.Foo src") == Failed(
        127, "Service not found: test.Foo+"
    )


def test_non_executable_is_failed_125(services: Path) -> None:
    add(services, "test.Plain", "#!/bin/sh\n", 0o644)
    result = start(context(services), b"QUBESRPC test.Plain src")
    assert isinstance(result, Failed) and result.status == 125


@pytest.mark.parametrize(
    ("content", "status"),
    [("#!/nonexistent/interpreter\n", 127), ("\x7fELF garbage\n", 125)],
)
def test_exec_errors_are_exit_statuses(services: Path, content: str, status: int) -> None:
    add(services, "test.Bad", content)
    out, err, code = finish(start(context(services), b"QUBESRPC test.Bad src"))
    assert code == status
    assert b"failed to execute" in err


def test_directory_fails_to_execute(services: Path) -> None:
    (services / "test.Dir").mkdir()
    _, _, code = finish(start(context(services), b"QUBESRPC test.Dir src"))
    assert code == 125


def test_wrong_token_count_is_125(services: Path) -> None:
    add(services, "test.Env", ENV_SERVICE)
    out, err, code = finish(start(context(services), b"QUBESRPC test.Env src name"))
    assert (out, code) == (b"", 125)
    assert b"invalid number of arguments" in err


def test_user_mismatch_in_non_root_mode(services: Path) -> None:
    add(services, "test.Env", ENV_SERVICE)
    ctx = context(services, own_user="alice")
    out, err, code = finish(start(ctx, b"QUBESRPC test.Env src", user="bob"))
    assert (out, code) == (b"", 125)
    message = "requested user bob, but qrexec-agent is running as user alice"
    assert err == message.encode() + b"\n"
    assert message in ctx.log.__self__  # type: ignore[attr-defined]


def test_force_user_mismatch_in_non_root_mode(services: Path) -> None:
    add(services, "test.Env", ENV_SERVICE)
    config_dir = services / "config"
    config_dir.mkdir()
    (config_dir / "test.Env").write_text("force-user = 'nobody-else'\n")
    ctx = context(services, rpc_config_path=[str(config_dir)])
    _, err, code = finish(start(ctx, b"QUBESRPC test.Env src", user="root"))
    assert code == 125
    assert b"requested user nobody-else, but qrexec-agent is running as user root" in err


def test_non_root_agent_as_real_unprivileged_user(services: Path) -> None:
    """The agent's own user comes from its effective uid when not injected."""
    add(services, "test.Id", "#!/bin/sh\nid -un\n")
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from pyqrexec.protocol.cmdline import parse_command\n"
        "from pyqrexec.services.spawn import *\n"
        "from pyqrexec.system.environment import Environment\n"
        f"ctx = SpawnContext(Executor.USER_AGENT, [{str(services)!r}], Environment.current())\n"
        "for user in ('nobody', 'root'):\n"
        "    r = start_command(parse_command(b'QUBESRPC test.Id src'), user, ctx)\n"
        "    r.stdin.close()\n"
        "    out = r.stdout.makefile('rb').read()\n"
        "    err = os.read(r.stderr, 1000)\n"
        "    print(os.waitstatus_to_exitcode(os.waitpid(r.pid, 0)[1]), out, err)\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-c",
            script,
        ],
        env={**os.environ, "PYTHONPATH": src},
        capture_output=True,
        check=True,
        cwd="/",
    )
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "0 b'nobody\\n' b''"
    assert lines[1].startswith(
        "125 b'' b'requested user root, but qrexec-agent is running as user nobody"
    )


def test_broken_rpc_config_fails_before_starting(services: Path) -> None:
    marker = services / "ran"
    add(services, "test.Svc", f"#!/bin/sh\ntouch {marker}\n")
    config_dir = services / "config"
    config_dir.mkdir()
    for text in ("wait-for-session = 01\n", 'wait-for-session = "a"\n', "wait-for-session\n"):
        (config_dir / "test.Svc").write_text(text)
        ctx = context(services, rpc_config_path=[str(config_dir)])
        result = start(ctx, b"QUBESRPC test.Svc src")
        assert isinstance(result, Failed) and result.status == 125
    assert not marker.exists()


class SocketService:
    """A Unix-socket service answering one connection: records what arrives, sends a reply."""

    def __init__(self, path: Path, reply: bytes = b"reply") -> None:
        self.received = b""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # bind relative to the directory, so that paths longer than sun_path work too
        here = os.getcwd()
        os.chdir(path.parent)
        try:
            self.listener.bind(path.name)
        finally:
            os.chdir(here)
        self.listener.listen(1)
        self.reply = reply
        self.thread = threading.Thread(target=self.serve)
        self.thread.start()

    def serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            while chunk := connection.recv(65536):
                self.received += chunk
            try:
                connection.sendall(self.reply)
            except BrokenPipeError:
                pass  # a just-exec caller does not read

    def close(self) -> bytes:
        self.thread.join()
        self.listener.close()
        return self.received


def test_socket_service(services: Path) -> None:
    server = SocketService(services / "test.Sock")
    started = start(context(services), b"QUBESRPC test.Sock+x work")
    assert isinstance(started, Started)
    assert started.pid is None and started.stderr is None and started.stdin is started.stdout
    out, _, status = finish(started, b"hello")
    assert (out, status) == (b"reply", 0)
    assert server.close() == b"test.Sock+x work\0hello"


def test_socket_header_keeps_command_text_verbatim(services: Path) -> None:
    server = SocketService(services / "test.Sock+")
    finish(start(context(services, Executor.DOM0), b"QUBESRPC test.Sock src name dom0"))
    assert server.close() == b"test.Sock src name dom0\0"


def test_socket_service_skip_descriptor(services: Path) -> None:
    server = SocketService(services / "test.Sock")
    config_dir = services / "config"
    config_dir.mkdir()
    (config_dir / "test.Sock").write_text("skip-service-descriptor = true\n")
    ctx = context(services, rpc_config_path=[str(config_dir)])
    started = start(ctx, b"QUBESRPC test.Sock+x work")
    assert isinstance(started, Started) and started.config.skip_service_descriptor
    finish(started, b"data")
    assert server.close() == b"data"


def test_socket_service_with_long_path(services: Path) -> None:
    deep = services / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server = SocketService(deep / "sock")
    (services / "test.Long").symlink_to(deep / "sock")
    out, _, _ = finish(start(context(services), b"QUBESRPC test.Long src"))
    assert out == b"reply"
    assert server.close() == b"test.Long src\0"


def test_socket_just_exec(services: Path) -> None:
    server = SocketService(services / "test.Sock")
    result = start(context(services, just_exec=True), b"QUBESRPC test.Sock+ src")
    assert result == Detached(None)
    assert server.close() == b"test.Sock+ src\0"


def test_socket_connect_failure_and_dom0_refusal(services: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(services / "test.Dead"))
    listener.close()
    result = start(context(services), b"QUBESRPC test.Dead src")
    assert isinstance(result, Failed) and result.status == 125
    alive = socket.socket(socket.AF_UNIX)
    alive.bind(str(services / "test.Sock"))
    alive.listen(1)
    with alive:
        refused = start(
            context(services, Executor.DOM0, executables_only=True), b"QUBESRPC test.Sock src"
        )
    assert isinstance(refused, Failed) and refused.status == 125
    assert "dom0 -> dom0" in refused.message


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    yield listener
    listener.close()


def serve_tcp_once(listener: socket.socket, received: list[bytes]) -> threading.Thread:
    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            data = b""
            while chunk := connection.recv(65536):
                data += chunk
            received.append(data)
            connection.sendall(b"tcp-reply")

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


def test_tcp_service_port_in_argument(services: Path, tcp_listener: socket.socket) -> None:
    port = tcp_listener.getsockname()[1]
    (services / "test.Tcp").symlink_to("/dev/tcp/127.0.0.1")
    received: list[bytes] = []
    thread = serve_tcp_once(tcp_listener, received)
    out, _, status = finish(start(context(services), b"QUBESRPC test.Tcp+%d work" % port), b"in")
    thread.join()
    assert (out, status) == (b"tcp-reply", 0)
    assert received == [b"test.Tcp+%d work\0in" % port]


def test_tcp_service_port_in_link_and_host_in_argument(
    services: Path, tcp_listener: socket.socket
) -> None:
    port = tcp_listener.getsockname()[1]
    (services / "test.Fixed").symlink_to(f"/dev/tcp/127.0.0.1/{port}")
    (services / "test.Any").symlink_to("/dev/tcp")
    for command in (b"QUBESRPC test.Fixed src", b"QUBESRPC test.Any+127.0.0.1+%d src" % port):
        received: list[bytes] = []
        thread = serve_tcp_once(tcp_listener, received)
        out, _, _ = finish(start(context(services), command))
        thread.join()
        assert out == b"tcp-reply"


@pytest.mark.parametrize(
    "command",
    [b"QUBESRPC test.Tcp+08082 src", b"QUBESRPC test.Tcp src", b"QUBESRPC test.Tcp+x src"],
)
def test_tcp_bad_argument_is_125(services: Path, command: bytes) -> None:
    (services / "test.Tcp").symlink_to("/dev/tcp/127.0.0.1")
    result = start(context(services), command)
    assert isinstance(result, Failed) and result.status == 125


def test_tcp_name_and_refused_connection_are_125(
    services: Path, tcp_listener: socket.socket
) -> None:
    (services / "test.Any").symlink_to("/dev/tcp")
    named = start(context(services), b"QUBESRPC test.Any+localhost+80 src")
    assert isinstance(named, Failed) and named.status == 125
    closed_port = tcp_listener.getsockname()[1]
    tcp_listener.close()
    refused = start(context(services), b"QUBESRPC test.Any+127.0.0.1+%d src" % closed_port)
    assert isinstance(refused, Failed) and refused.status == 125


def test_just_exec_executable(services: Path) -> None:
    marker = services / "ran"
    add(services, "test.Svc", f'#!/bin/sh\nread line || echo "stdin at eof" > {marker}\n')
    result = start(context(services, just_exec=True), b"QUBESRPC test.Svc src")
    assert isinstance(result, Detached) and result.pid is not None
    os.waitpid(result.pid, 0)
    assert marker.read_text() == "stdin at eof\n"


def test_shell_commands(services: Path) -> None:
    ctx = context(services)
    out, _, status = finish(start(ctx, b"echo $0; exit 4"))
    assert (out, status) == (b"sh\n", 4)
    fork_ctx = context(services, Executor.FORK_SERVER, environ={b"SHELL": b"/bin/bash"})
    out, _, _ = finish(start(fork_ctx, b"echo $0"))
    assert out == b"bash\n"
    dom0_ctx = context(services, Executor.DOM0)
    out, _, _ = finish(start(dom0_ctx, b"echo $BASH_VERSION | cut -c1"))
    assert out.strip().isdigit()
    _, err, status = finish(start(context(services, own_user="alice"), b"true", user="bob"))
    assert status == 125 and b"requested user bob" in err


def test_root_mode_switches_user(services: Path) -> None:
    add(
        services,
        "test.Who",
        '#!/bin/sh\nid -un\necho "$HOME $USER $LOGNAME"\npwd\necho "$QREXEC_SERVICE_FULL_NAME"\n',
    )
    ctx = context(services, Executor.ROOT_AGENT)
    out, _, status = finish(start(ctx, b"QUBESRPC test.Who+a src", user="root"))
    root = pwd.getpwnam("root")
    assert status == 0
    assert out.decode().splitlines() == [
        "root",
        f"{root.pw_dir} root root",
        root.pw_dir,
        "test.Who+a",
    ]
    out, err, status = finish(start(ctx, b"QUBESRPC test.Who+a src", user="nobody"))
    assert status == 0
    assert out.decode().splitlines()[0] == "nobody"
    assert out.decode().splitlines()[-1] == "test.Who+a"


def test_root_mode_missing_user(services: Path) -> None:
    add(services, "test.Who", "#!/bin/sh\nid -un\n")
    ctx = context(services, Executor.ROOT_AGENT)
    out, err, status = finish(start(ctx, b"QUBESRPC test.Who src", user="no-such-user"))
    assert (out, status) == (b"", 125)
    assert b"user no-such-user does not exist" in err


def test_root_mode_shell_command(services: Path) -> None:
    ctx = context(services, Executor.ROOT_AGENT)
    out, _, status = finish(start(ctx, b"id -un; exit 5", user="root"))
    assert (out, status) == (b"root\n", 5)


def test_session_waiter_gets_user_line(services: Path) -> None:
    record = services / "record"
    add(
        services,
        "qubes.WaitForSession",
        f'#!/bin/sh\n{{ echo "$#"; cat; echo "$QREXEC_REMOTE_DOMAIN"; }} > {record}\nexit 7\n',
    )
    pid = start_session_waiter([str(services)], "alice", b"work", os.environb)
    assert pid is not None
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 7
    assert record.read_text() == "0\nalice\nwork\n"
    messages: list[str] = []
    assert run_session_waiter([str(services)], b"dom0", messages.append, os.environb) == 7
    assert record.read_text() == "0\ndom0\n"
    assert messages == ["qubes.WaitForSession exited with 7"]


def test_session_waiter_missing(services: Path) -> None:
    assert start_session_waiter([str(services)], "alice", b"work", os.environb) is None
    messages: list[str] = []
    assert run_session_waiter([str(services)], b"dom0", messages.append, os.environb) is None


def _children() -> set[int]:
    """This process's children (other tests' may be among them)."""
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        return {int(pid) for pid in f.read().split()}


def test_prepared_service_starts_nothing_until_start(services: Path, tmp_path: Path) -> None:
    """A call handler prepares before its data channel is up (docs/architecture.md#a-calls-start):
    the service runs only at `start`, and a discarded preparation leaves nothing open."""
    marker = tmp_path / "ran"
    add(services, "test.Mark", f"#!/bin/sh\ntouch {marker}\necho done\n")
    ctx = context(services)
    before = open_fds()
    children = _children()
    prepared = prepare_command(parse_command(b"QUBESRPC test.Mark work"), "root", ctx)
    assert _children() == children
    assert not marker.exists()
    out, _err, status = finish(prepared.start())
    assert (out, status) == (b"done\n", 0)
    assert marker.exists()
    assert opened_since(before) == {}

    for command in (b"QUBESRPC test.Mark work", b"true"):
        prepared = prepare_command(parse_command(command), "root", ctx)
        assert opened_since(before)  # the child's streams, opened ahead
        prepared.discard()
        assert opened_since(before) == {}
    marker.unlink()
    assert not marker.exists()


def test_prepared_socket_service_is_connected_only_at_start(services: Path) -> None:
    """Connecting a socket service is its start: a preparation does not connect."""
    path = services / "test.Sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.setblocking(False)
    try:
        prepared = prepare_command(parse_command(b"QUBESRPC test.Sock work"), "root",
                                   context(services))
        with pytest.raises(BlockingIOError):
            listener.accept()
        started = prepared.start()
        assert isinstance(started, Started) and started.pid is None
        conn, _ = listener.accept()
        conn.setblocking(True)
        assert conn.recv(100) == b"test.Sock work\0"
        conn.close()
        started.stdin.close()
    finally:
        listener.close()
