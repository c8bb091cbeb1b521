"""dom0 as the service side: dom0 -> dom0 calls, the VM -> dom0 service call, and
qrexec-client's legacy connect mode (`-c`) to dom0 and to a VM
(docs/reference/protocol.md#vm-to-dom0, docs/reference/protocol.md#legacy-connect-mode,
docs/reference/cli.md#qrexec-client)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqrexec.call.dom0_service import Dom0CallResult, run_dom0_service
from pyqrexec.protocol.constants import MsgType
from pyqrexec.system.environment import Environment

from .fixtures.connect import SourceAgent, accept_data, speak_as_caller, start_source
from .fixtures.fakes import FakeQubesd
from .fixtures.processes import Domain, QrexecHost, program, wait_for

STDOUT, STDERR, EXIT = MsgType.DATA_STDOUT, MsgType.DATA_STDERR, MsgType.DATA_EXIT_CODE

ENV_SERVICE = """#!/bin/sh
echo "argv=$*"
env | grep '^QREXEC' | sort
"""


def _service(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(body)
    path.chmod(mode)
    return path


@pytest.fixture
def rpc(host: QrexecHost) -> Path:
    """dom0's service directory, with a few services."""
    d = host.root / "rpc"
    _service(d, "test.Env", ENV_SERVICE)
    _service(d, "test.Exit", "#!/bin/sh\nexit ${1:-0}\n")
    _service(d, "test.Cat", "#!/bin/sh\necho start\ntr a-z A-Z\necho err >&2\n")
    return d


def _dom0_env(host: QrexecHost, rpc: Path, **extra: str) -> dict[str, str]:
    return {"QREXEC_SERVICE_PATH": str(rpc),
            "QUBES_RPC_CONFIG_PATH": str(host.root / "rpc-config"), **extra}


def _env_lines(out: bytes) -> dict[str, str]:
    found = {}
    for line in out.decode().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value
    return found


# --- dom0 -> dom0 (qrexec-client -d dom0, no -c) ------------------------------------------


def _d0(host: QrexecHost, rpc: Path, *args: str, input: bytes | None = None,
        **extra: str) -> subprocess.CompletedProcess[bytes]:
    return host.client(*args, input=input, env=_dom0_env(host, rpc, **extra))


@pytest.mark.parametrize("target", ["dom0", "@adminvm", f"uuid:{'0' * 8}-{'0000-' * 3}{'0' * 12}"])
@pytest.mark.parametrize("status", [0, 3, 255])
def test_dom0_to_dom0_status_passthrough(host: QrexecHost, rpc: Path, target: str,
                                         status: int) -> None:
    r = _d0(host, rpc, "-d", target, f"DEFAULT:QUBESRPC test.Exit+{status} dom0")
    assert r.returncode == status
    assert r.stderr == b""


def test_dom0_to_dom0_replaces_the_client(host: QrexecHost, rpc: Path) -> None:
    _service(rpc, "test.Pid", "#!/bin/sh\necho $$\n")
    proc = subprocess.Popen([*program("qrexec-client"), "-d", "dom0",
                             "DEFAULT:QUBESRPC test.Pid dom0"], stdout=subprocess.PIPE,
                            env=host.env(0, **_dom0_env(host, rpc)))
    out, _ = proc.communicate(timeout=30)
    assert int(out) == proc.pid


def test_dom0_to_dom0_stdio_are_the_clients(host: QrexecHost, rpc: Path) -> None:
    r = _d0(host, rpc, "-d", "dom0", "DEFAULT:QUBESRPC test.Cat dom0", input=b"abc\n")
    assert r.returncode == 0
    assert r.stdout == b"start\nABC\n"
    assert r.stderr == b"err\n"


def test_dom0_to_dom0_environment(host: QrexecHost, rpc: Path) -> None:
    r = _d0(host, rpc, "-d", "dom0", "DEFAULT:QUBESRPC test.Env+arg work keyword adminvm",
            QREXECFOO="1", QREXEC_REQUESTED_TARGET="%bad")
    assert r.returncode == 0, r.stderr
    env = _env_lines(r.stdout)
    assert env["argv"] == "arg"
    assert env["QREXEC_REMOTE_DOMAIN"] == "work"
    assert env["QREXEC_SERVICE_FULL_NAME"] == "test.Env+arg"
    assert env["QREXEC_SERVICE_ARGUMENT"] == "arg"
    assert env["QREXEC_REQUESTED_TARGET_TYPE"] == "keyword"
    assert env["QREXEC_REQUESTED_TARGET_KEYWORD"] == "adminvm"
    assert "QREXEC_REQUESTED_TARGET" not in env
    assert "QREXECFOO" not in env
    assert env["QREXEC_SERVICE_PATH"] == str(rpc)


def test_dom0_to_dom0_two_token_form(host: QrexecHost, rpc: Path) -> None:
    r = _d0(host, rpc, "-d", "dom0", "DEFAULT:QUBESRPC test.Env dom0")
    env = _env_lines(r.stdout)
    assert env["argv"] == ""
    assert env["QREXEC_SERVICE_FULL_NAME"] == "test.Env"
    assert env["QREXEC_REQUESTED_TARGET_TYPE"] == ""
    assert "QREXEC_SERVICE_ARGUMENT" not in env


def test_dom0_to_dom0_not_found(host: QrexecHost, rpc: Path) -> None:
    r = _d0(host, rpc, "-d", "dom0", "DEFAULT:QUBESRPC no.Such dom0")
    assert r.returncode == 127
    assert b"Service not found: no.Such+" in r.stderr


def test_dom0_to_dom0_needs_default_prefix(host: QrexecHost, rpc: Path) -> None:
    r = _d0(host, rpc, "-d", "dom0", "root:QUBESRPC test.Exit dom0")
    assert r.returncode == 125
    assert b"dom0 -> dom0 commands must be prefixed with DEFAULT:" in r.stderr


@pytest.mark.parametrize("cmd", ["DEFAULT:echo hi", "DEFAULT:QUBESRPCtest.Exit dom0",
                                 "DEFAULT:QUBESRPC test.Exit"])
def test_dom0_to_dom0_needs_a_service_call(host: QrexecHost, rpc: Path, cmd: str) -> None:
    r = _d0(host, rpc, "-d", "dom0", cmd)
    assert r.returncode == 125
    assert r.stdout == b""


def test_dom0_to_dom0_local_command_not_implemented(host: QrexecHost, rpc: Path) -> None:
    r = _d0(host, rpc, "-d", "dom0", "-l", "cat", "DEFAULT:QUBESRPC test.Exit dom0")
    assert r.returncode == 125
    assert b"not yet implemented" in r.stderr


def test_dom0_to_dom0_executables_only(host: QrexecHost, rpc: Path) -> None:
    import socket

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(rpc / "test.Sock"))
    server.listen(1)
    (rpc / "test.Tcp").symlink_to("/dev/tcp/127.0.0.1/9")
    try:
        for svc in ("test.Sock", "test.Tcp"):
            r = _d0(host, rpc, "-d", "dom0", f"DEFAULT:QUBESRPC {svc} dom0")
            assert r.returncode == 125
            assert b"not supported for dom0 -> dom0 calls" in r.stderr
    finally:
        server.close()


@pytest.mark.parametrize("body,mode,status", [
    ("#!/bin/sh\nexit 0\n", 0o644, 125),            # not executable: unknown service type
    ("#!/no/such/interpreter\n", 0o755, 127),        # execve ENOENT
    ("\x7fELF garbage", 0o755, 125),                 # execve ENOEXEC
])
def test_dom0_to_dom0_start_failures(host: QrexecHost, rpc: Path, body: str, mode: int,
                                     status: int) -> None:
    _service(rpc, "test.Bad", body, mode)
    r = _d0(host, rpc, "-d", "dom0", "DEFAULT:QUBESRPC test.Bad dom0")
    assert r.returncode == status


def test_dom0_to_dom0_token_count(host: QrexecHost, rpc: Path) -> None:
    r = _d0(host, rpc, "-d", "dom0", "DEFAULT:QUBESRPC test.Exit dom0 name")
    assert r.returncode == 125
    assert b"invalid number of arguments" in r.stderr


def test_dom0_to_dom0_wait_for_session(host: QrexecHost, rpc: Path) -> None:
    marker = host.root / "waited"
    _service(rpc, "qubes.WaitForSession",
             f'#!/bin/sh\nsleep 0.2\necho "$QREXEC_REMOTE_DOMAIN" > {marker}\n')
    _service(rpc, "test.After", f"#!/bin/sh\ncat {marker}\n")
    (host.root / "rpc-config").mkdir()
    (host.root / "rpc-config" / "test.After").write_text("wait-for-session = true\n")
    r = _d0(host, rpc, "-d", "dom0", "DEFAULT:QUBESRPC test.After work")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"work\n"
    assert r.stderr == b""


def test_dom0_to_dom0_bad_rpc_config(host: QrexecHost, rpc: Path) -> None:
    (host.root / "rpc-config").mkdir()
    (host.root / "rpc-config" / "test.Exit").write_text("wait-for-session = maybe\n")
    r = _d0(host, rpc, "-d", "dom0", "DEFAULT:QUBESRPC test.Exit dom0")
    assert r.returncode == 125


def test_dom0_to_dom0_nogui_skips_rpc_config(host: QrexecHost, rpc: Path) -> None:
    (host.root / "rpc-config").mkdir()
    (host.root / "rpc-config" / "test.Exit").write_text("wait-for-session = maybe\n")
    r = _d0(host, rpc, "-d", "dom0", "DEFAULT:nogui:QUBESRPC test.Exit+2 dom0")
    assert r.returncode == 2


# --- the VM -> dom0 service call, driven by hand --------------------------------------------


class _Call:
    """run_dom0_service in a thread against a hand-driven caller (domid 7, port 513)."""

    def __init__(self, host: QrexecHost, rpc: Path, command: bytes, port: int = 513,
                 timeout: float | None = 10.0, **kw: object) -> None:
        self.result: Dom0CallResult | None = None
        self.logged: list[str] = []
        env = host.env(0, **_dom0_env(host, rpc))

        def run() -> None:
            self.result = run_dom0_service(command, 7, port, env=Environment(env),
                                           timeout=timeout, log=self.logged.append, **kw)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> Dom0CallResult:
        self.thread.join(30)
        assert self.result is not None
        return self.result


def test_service_call_relays_and_orders(host: QrexecHost, rpc: Path) -> None:
    call = _Call(host, rpc, b"QUBESRPC test.Cat+ work name dom0\0")
    view = speak_as_caller(accept_data(host, 7, 0, 513), b"hello\n")
    assert view.peer_version == 4
    # no stderr stream: STDERR EOF right after HELLO, EXIT_CODE last after STDOUT EOF
    assert view.types[0] == STDERR
    assert view.types[-2:] == [STDOUT, EXIT]
    assert view.stdout == b"start\nHELLO\n"
    assert view.stderr == b""
    assert view.status == 0
    assert call.join() == Dom0CallResult(0, True)
    assert call.join().worker_status == 0
    # what the relay counted passing each way (docs/audit.md "Calls' ends")
    traffic = call.join().traffic
    assert traffic is not None
    assert (traffic.received, traffic.sent) == (len(b"hello\n"), len(b"start\nHELLO\n"))


def test_service_call_status_and_environment(host: QrexecHost, rpc: Path) -> None:
    call = _Call(host, rpc, b"QUBESRPC test.Env+ work keyword adminvm")
    view = speak_as_caller(accept_data(host, 7, 0, 513))
    env = _env_lines(view.stdout)
    assert env["QREXEC_REMOTE_DOMAIN"] == "work"
    assert env["QREXEC_SERVICE_FULL_NAME"] == "test.Env+"
    assert env["QREXEC_SERVICE_ARGUMENT"] == ""
    assert env["QREXEC_REQUESTED_TARGET_TYPE"] == "keyword"
    assert env["QREXEC_REQUESTED_TARGET_KEYWORD"] == "adminvm"
    assert "QREXEC_REQUESTED_TARGET" not in env
    assert call.join().service_ran

    call = _Call(host, rpc, b"QUBESRPC test.Exit+9 work name dom0", port=514)
    assert speak_as_caller(accept_data(host, 7, 0, 514)).status == 9
    result = call.join()
    assert result == Dom0CallResult(9, True)
    assert result.worker_status == 0


@pytest.mark.parametrize("command,status", [
    (b"QUBESRPC no.Such+ work name dom0", 127),
    (b"QUBESRPC  work", 125),  # parse failure: empty descriptor
])
def test_service_call_failure_before_start(host: QrexecHost, rpc: Path, command: bytes,
                                           status: int) -> None:
    call = _Call(host, rpc, command)
    view = speak_as_caller(accept_data(host, 7, 0, 513), b"ignored")
    assert view.types == [STDERR, STDOUT, EXIT]
    assert view.status == status
    result = call.join()
    assert result == Dom0CallResult(status, False)
    assert result.worker_status == status


def test_service_call_socket_service(host: QrexecHost, rpc: Path) -> None:
    import socket

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(rpc / "test.Sock"))
    server.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        got.append(data)
        conn.sendall(b"reply")
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        call = _Call(host, rpc, b"QUBESRPC test.Sock+ work name dom0")
        view = speak_as_caller(accept_data(host, 7, 0, 513), b"in")
        t.join(10)
        assert got == [b"test.Sock+ work name dom0\0in"]
        assert view.stdout == b"reply"
        assert view.types[0] == STDERR
        assert view.status == 0
        assert call.join() == Dom0CallResult(0, True)
    finally:
        server.close()


def test_service_call_shell_command_sees_remote_domain(host: QrexecHost, rpc: Path) -> None:
    call = _Call(host, rpc, b"echo $QREXEC_REMOTE_DOMAIN; exit 4", remote_domain=b"work")
    view = speak_as_caller(accept_data(host, 7, 0, 513))
    assert view.stdout == b"work\n"
    assert view.status == 4
    assert call.join() == Dom0CallResult(4, True)


def test_service_call_connect_timeout(host: QrexecHost, rpc: Path) -> None:
    marker = host.root / "started"
    _service(rpc, "test.Mark", f"#!/bin/sh\ntouch {marker}\ncat >/dev/null\n")
    start = time.monotonic()
    call = _Call(host, rpc, b"QUBESRPC test.Mark+ work name dom0", timeout=0.5)
    assert call.join() == Dom0CallResult(125, False)
    assert time.monotonic() - start < 10
    assert any("data vchan connection failed" in line for line in call.logged)
    # the service is started before the connect (docs/reference/protocol.md#vm-to-dom0, step 4);
    # it is abandoned
    wait_for(marker.exists, 10, "service start")


def test_service_call_caller_vanishes(host: QrexecHost, rpc: Path) -> None:
    _service(rpc, "test.Slow", "#!/bin/sh\nexec cat\n")
    call = _Call(host, rpc, b"QUBESRPC test.Slow+ work name dom0")
    sock = accept_data(host, 7, 0, 513)
    sock.close()
    result = call.join()
    assert result == Dom0CallResult(125, False)


# --- qrexec-client -c: legacy connect mode ----------------------------------------------------


@pytest.fixture
def src(host: QrexecHost) -> Iterator[tuple[Domain, SourceAgent]]:
    """The source domain `src` (domid 7): pending-request daemon + fake agent."""
    dom, agent = start_source(host, "src", 7)
    yield dom, agent
    agent.close()


def _pending(src: tuple[Domain, SourceAgent], ident: bytes, target: bytes = b"@adminvm") -> None:
    """Trigger a call in the source domain and wait until its daemon holds it pending."""
    dom, agent = src
    agent.trigger(b"test.Svc", target, ident)
    line = f"pending request {ident.decode()}\n"
    wait_for(lambda: line in dom.daemon_log.read_text(), 10, line)


def _client(host: QrexecHost, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.Popen[bytes]:
    argv = [*program("qrexec-client"), f"--socket-dir={host.socket_dir}", *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=host.env(0, **(env or {})))


def test_connect_to_dom0(host: QrexecHost, rpc: Path, src: tuple[Domain, SourceAgent]) -> None:
    _dom, agent = src
    _pending(src, b"SOCKET11")
    proc = _client(host, "-d", "dom0", "-c", "SOCKET11,src,7",
                   "QUBESRPC test.Cat+ src name dom0", env=_dom0_env(host, rpc))
    t, domain, port, payload = agent.message()
    assert (t, domain, port) == (MsgType.SERVICE_CONNECT, 0, 513)
    assert payload == b"SOCKET11".ljust(32, b"\0")
    view = speak_as_caller(accept_data(host, 7, 0, port), b"abc\n")
    assert view.types[0] == STDERR
    assert view.stdout == b"start\nABC\n"
    assert view.status == 0
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out == b""
    assert b"err\n" in err  # the service's stderr is qrexec-client's


@pytest.mark.parametrize("extra,status", [([], 5), (["-E"], 0)])
def test_connect_to_dom0_status(host: QrexecHost, rpc: Path, src: tuple[Domain, SourceAgent],
                                extra: list[str], status: int) -> None:
    _dom, agent = src
    _pending(src, b"SOCKET12")
    proc = _client(host, *extra, "-d", "@adminvm", "-c", "SOCKET12,src,7",
                   "QUBESRPC test.Exit+5 src keyword adminvm", env=_dom0_env(host, rpc))
    _t, _d, port, _p = agent.message()
    assert speak_as_caller(accept_data(host, 7, 0, port)).status == 5
    assert proc.wait(30) == status


@pytest.mark.parametrize("extra", [[], ["-E"]])
def test_connect_to_dom0_not_found(host: QrexecHost, rpc: Path,
                                   src: tuple[Domain, SourceAgent], extra: list[str]) -> None:
    _dom, agent = src
    _pending(src, b"SOCKET13")
    proc = _client(host, *extra, "-d", "dom0", "-c", "SOCKET13,src,7",
                   "QUBESRPC no.Such+ src name dom0", env=_dom0_env(host, rpc))
    _t, _d, port, _p = agent.message()
    view = speak_as_caller(accept_data(host, 7, 0, port))
    assert view.types == [STDERR, STDOUT, EXIT]
    assert view.status == 127
    assert proc.wait(30) == 127


def test_connect_to_dom0_shell_command(host: QrexecHost, rpc: Path,
                                       src: tuple[Domain, SourceAgent]) -> None:
    _dom, agent = src
    _pending(src, b"SOCKET14")
    proc = _client(host, "-d", "dom0", "-c", "SOCKET14,src,7",
                   "echo from $QREXEC_REMOTE_DOMAIN; exit 3", env=_dom0_env(host, rpc))
    _t, _d, port, _p = agent.message()
    view = speak_as_caller(accept_data(host, 7, 0, port))
    assert view.stdout == b"from src\n"
    assert view.status == 3
    assert proc.wait(30) == 3


def test_connect_to_dom0_unknown_ident(host: QrexecHost, rpc: Path,
                                       src: tuple[Domain, SourceAgent]) -> None:
    r = host.client("-d", "dom0", "-c", "SOCKET99,src,7", "QUBESRPC test.Exit+ src name dom0",
                    env=_dom0_env(host, rpc))
    assert r.returncode == 125


@pytest.mark.parametrize("extra", [[], ["-E"]])
def test_connect_to_dom0_no_daemon(host: QrexecHost, rpc: Path, extra: list[str]) -> None:
    r = host.client(*extra, "-d", "dom0", "-c", "SOCKET1,nosuch,7",
                    "QUBESRPC test.Exit+ nosuch name dom0", env=_dom0_env(host, rpc))
    assert r.returncode == 125


def test_connect_to_dom0_data_timeout(host: QrexecHost, rpc: Path,
                                      src: tuple[Domain, SourceAgent]) -> None:
    _dom, agent = src
    _pending(src, b"SOCKET15")
    start = time.monotonic()
    r = host.client("-E", "-w", "1", "-d", "dom0", "-c", "SOCKET15,src,7",
                    "QUBESRPC test.Exit+ src name dom0", env=_dom0_env(host, rpc))
    assert r.returncode == 125
    assert time.monotonic() - start < 8


def test_connect_to_dom0_empty_reqid(host: QrexecHost, rpc: Path) -> None:
    r = host.client("-d", "dom0", "-c", ",src,7", "QUBESRPC test.Exit+ src name dom0",
                    env=_dom0_env(host, rpc))
    assert r.returncode == 125


@pytest.fixture
def tgt(host: QrexecHost, rpc: Path) -> Domain:
    """The target VM `tgt` (domid 9): real daemon and agent with dom0's service directory."""
    dom = host.domain("tgt", 9)
    dom.agent_env["QREXEC_SERVICE_PATH"] = str(rpc)
    return dom.start()


def test_connect_to_vm(host: QrexecHost, src: tuple[Domain, SourceAgent], tgt: Domain) -> None:
    _dom, agent = src
    _pending(src, b"SOCKET21", b"tgt")
    r = host.client("-d", "tgt", "-c", "SOCKET21,src,7", "DEFAULT:QUBESRPC test.Cat+ src")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""
    t, domain, port, payload = agent.message()
    # daemon(9) allocated with peer 7 < 9: the first odd slot
    assert (t, domain, port) == (MsgType.SERVICE_CONNECT, 9, 513)
    assert payload == b"SOCKET21".ljust(32, b"\0")
    view = speak_as_caller(accept_data(host, 7, 9, port), b"xyz\n")
    assert view.stdout == b"start\nXYZ\n"
    assert view.stderr == b"err\n"
    assert view.status == 0


def test_connect_to_vm_wait_and_kill(host: QrexecHost, src: tuple[Domain, SourceAgent],
                                     tgt: Domain) -> None:
    qubesd = FakeQubesd(str(host.root / "qubesd.sock"))
    try:
        _dom, agent = src
        _pending(src, b"SOCKET22", b"tgt")
        proc = _client(host, "-W", "-k", "-d", "tgt", "-c", "SOCKET22,src,7",
                       "DEFAULT:QUBESRPC test.Exit+6 src",
                       env={"QUBESD_SOCKET": str(host.root / "qubesd.sock")})
        _t, _d, port, _p = agent.message()
        sock = accept_data(host, 7, 9, port)
        time.sleep(0.3)
        assert proc.poll() is None  # -W: still waiting for the call to end
        assert qubesd.methods() == []
        assert speak_as_caller(sock).status == 6
        assert proc.wait(30) == 0
        assert qubesd.methods() == [b"admin.vm.Kill+ dom0 name tgt"]
    finally:
        qubesd.close()


def test_connect_to_vm_without_target_daemon(host: QrexecHost,
                                             src: tuple[Domain, SourceAgent]) -> None:
    _dom, agent = src
    _pending(src, b"SOCKET23", b"tgt")
    r = host.client("-d", "tgt", "-c", "SOCKET23,src,7", "DEFAULT:QUBESRPC test.Svc+ src")
    assert r.returncode == 137


def test_connect_to_vm_without_source_daemon(host: QrexecHost, tgt: Domain) -> None:
    r = host.client("-d", "tgt", "-c", "SOCKET24,nosuch,7", "DEFAULT:QUBESRPC test.Exit+ src")
    assert r.returncode == 137


def test_kill_after_vm_call(host: QrexecHost, tgt: Domain) -> None:
    qubesd = FakeQubesd(str(host.root / "qubesd.sock"))
    try:
        r = host.client("-k", "-d", "tgt", "root:exit 4",
                        env={"QUBESD_SOCKET": str(host.root / "qubesd.sock")})
        assert r.returncode == 4
        assert qubesd.methods() == [b"admin.vm.Kill+ dom0 name tgt"]
    finally:
        qubesd.close()


# --- -c argument validation (docs/reference/cli.md#qrexec-client) -------------------------


@pytest.mark.parametrize("args,message", [
    (["-c", "a,src,7", "-c", "b,src,7"], b""),
    (["-c", "a,src"], b"Invalid -c parameter"),
    (["-c", "a,src,7,8"], b"Invalid -c parameter"),
    (["-c", "a,,7"], b"Invalid -c parameter"),
    (["-c", "a,src,"], b"Invalid -c parameter"),
    (["-c", "x" * 32 + ",src,7"], b"request_id too long"),
    # the field holds 31 bytes and a NUL: 16 two-byte characters do not fit
    (["-c", "\u00e9" * 16 + ",src,7"], b"request_id too long"),
    (["-c", "a,dom0,7"], b"ERROR: -c cannot be used for requests to dom0"),
    (["-c", "a,@adminvm,7"], b"ERROR: -c cannot be used for requests to dom0"),
    (["-c", "a,src,x7"], b"does not start with an ASCII digit"),
    (["-c", "a,src,-7"], b"does not start with an ASCII digit"),
    (["-c", "a,src,7x"], b"trailing junk"),
    (["-c", "a,src,0"], b"out of range"),
    (["-c", "a,src,2147483648"], b"out of range"),
    (["-c", "a,src,7", "-e"], b"ERROR: only one of -e, -l, -c can be specified"),
    (["-c", "a,src,7", "-l", "cat"], b"ERROR: only one of -e, -l, -c can be specified"),
    (["-w", "x", "-c", "a,src,7"], b"does not start with an ASCII digit"),
])
def test_connect_usage_errors(host: QrexecHost, args: list[str], message: bytes) -> None:
    r = host.client("-d", "tgt", *args, "DEFAULT:QUBESRPC test.Svc+ src")
    assert r.returncode == 1
    assert message in r.stderr


@pytest.mark.parametrize("srcid", ["0x7", "07", "7"])
def test_connect_srcid_like_strtol(host: QrexecHost, srcid: str) -> None:
    # accepted; no daemon for the target afterwards: -c failure is 137, not a usage error
    r = host.client("-d", "tgt", "-c", f"a,src,{srcid}", "DEFAULT:QUBESRPC test.Svc+ src")
    assert r.returncode == 137


def test_max_length_reqid_is_accepted(host: QrexecHost) -> None:
    r = host.client("-d", "tgt", "-c", "x" * 31 + ",src,7", "DEFAULT:QUBESRPC test.Svc+ src")
    assert r.returncode == 137
