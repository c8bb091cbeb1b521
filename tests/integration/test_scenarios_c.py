"""Services and configuration (S24-S30), VM -> VM and dom0 -> VM through
real daemons and agents. `/etc/qubes-rpc` and `/etc/qubes/rpc-config` are per-domain
directories (QREXEC_SERVICE_PATH, QUBES_RPC_CONFIG_PATH)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from .fixtures.fakes import FakeServer
from .fixtures.processes import QrexecHost
from .fixtures.world import ALLOW_ALL, NOBODY, World
from .test_spawn import serve_tcp_once

pytestmark = pytest.mark.world(domains={"work": 5})


def rpc_config(w: World, vm: str, service: str, text: str) -> None:
    d = w.host.root / vm / "rpc-config"
    d.mkdir(parents=True, exist_ok=True)
    (d / service).write_text(text)


def test_s24_argument_lookup(world: World) -> None:
    local = world.host.root / "personal" / "local-rpc"
    etc = world.rpc_dir("personal")
    world.domain("personal", 6, agent_env={"QREXEC_SERVICE_PATH": f"{local}:{etc}"})
    world.service("personal", "test.Svc", '#!/bin/sh\necho "general $1"\n'
                  'echo "QREXEC_SERVICE_ARGUMENT=$QREXEC_SERVICE_ARGUMENT"\n')
    local.mkdir()
    (local / "test.Svc+a1").write_text("#!/bin/sh\necho specific\n")
    (local / "test.Svc+a1").chmod(0o755)
    r = world.call("work", "personal", "test.Svc+a1")
    assert (r.returncode, r.stdout) == (0, b"specific\n")
    r = world.call("work", "personal", "test.Svc+b2")
    assert (r.returncode, r.stdout) == (0, b"general b2\nQREXEC_SERVICE_ARGUMENT=b2\n")


def test_s25_empty_argument(world: World) -> None:
    world.domain("personal", 6)
    world.service("personal", "test.Svc+", '#!/bin/sh\necho "plus $# $QREXEC_SERVICE_FULL_NAME"\n')
    world.service("personal", "test.Svc", "#!/bin/sh\necho bare\n")
    r = world.call("work", "personal", "test.Svc")
    assert (r.returncode, r.stdout) == (0, b"plus 0 test.Svc+\n")


@pytest.fixture
def sock_service(world: World) -> Iterator[FakeServer]:
    """A socket service: records what it receives until EOF, then replies."""
    world.domain("personal", 6)
    server = FakeServer(str(world.rpc_dir("personal") / "test.Sock"), lambda _: b"reply\n")
    yield server
    server.close()


def test_s26_socket_service(world: World, sock_service: FakeServer) -> None:
    r = world.call("work", "personal", "test.Sock+x", input=b"stdin data")
    assert (r.returncode, r.stdout) == (0, b"reply\n")
    assert sock_service.requests == [b"test.Sock+x work\0stdin data"]


def test_s26_socket_service_without_descriptor(world: World, sock_service: FakeServer) -> None:
    rpc_config(world, "personal", "test.Sock", "skip-service-descriptor = true\n")
    r = world.call("work", "personal", "test.Sock+x", input=b"stdin data")
    assert (r.returncode, r.stdout) == (0, b"reply\n")
    assert sock_service.requests == [b"stdin data"]


def test_s27_tcp_service(world: World) -> None:
    world.domain("personal", 6)
    (world.rpc_dir("personal") / "test.Tcp").symlink_to("/dev/tcp/127.0.0.1")
    server = socket.create_server(("127.0.0.1", 8082))
    got: list[bytes] = []
    serve_tcp_once(server, got)
    try:
        r = world.call("work", "personal", "test.Tcp+8082", input=b"over tcp")
        assert (r.returncode, r.stdout) == (0, b"tcp-reply")
        assert got == [b"test.Tcp+8082 work\0over tcp"]
        assert world.call("work", "personal", "test.Tcp+08082").returncode == 125
        assert world.call("work", "personal", "test.Tcp").returncode == 125
    finally:
        server.close()


@pytest.mark.parametrize(
    "config",
    ["wait-for-session = 01\n", 'wait-for-session = "a"\n', "wait-for-session\n",
     "wait-for-session = 1\nwait-for-session = 1\n"],
    ids=["leading-zero", "string", "bare", "twice"],
)
def test_s28_broken_rpc_config(world: World, config: str) -> None:
    world.domain("personal", 6)
    marker = world.host.root / "started"
    world.service("personal", "test.Svc", f"#!/bin/sh\ntouch {marker}\n")
    rpc_config(world, "personal", "test.Svc", config)
    r = world.call("work", "personal", "test.Svc")
    assert r.returncode == 125
    assert not marker.exists()


def test_s29_forced_user_on_non_root_agent(world: World) -> None:
    dom = world.domain("personal", 6, user="nobody", agent_wrapper=NOBODY)
    marker = world.host.root / "started"
    world.service("personal", "test.Svc", f"#!/bin/sh\ntouch {marker}\n")
    # the agent runs as nobody and serves the call as it is
    assert world.call("work", "personal", "test.Svc").returncode == 0
    assert marker.exists()
    marker.unlink()
    rpc_config(world, "personal", "test.Svc", "force-user = 'nobody-else'\n")
    assert world.call("work", "personal", "test.Svc").returncode == 125
    assert not marker.exists()
    assert ("requested user nobody-else, but qrexec-agent is running as user nobody"
            in dom.agent_log.read_text())


def test_s29_policy_user_on_non_root_agent(host: QrexecHost) -> None:
    w = World(host, policy=ALLOW_ALL.replace("user=DEFAULT", "user=root"))
    w.domain("work", 5)
    dom = w.domain("personal", 6, user="nobody", agent_wrapper=NOBODY)
    marker = host.root / "started"
    w.service("personal", "test.Svc", f"#!/bin/sh\ntouch {marker}\n")
    assert w.call("work", "personal", "test.Svc").returncode == 125
    assert not marker.exists()
    assert ("requested user root, but qrexec-agent is running as user nobody"
            in dom.agent_log.read_text())


HOSTILE_ENV = {"QREXEC_SERVICE_ARGUMENT": "%bad", "QREXEC_REQUESTED_TARGET": "%bad",
               "QREXECFOO": "1"}
ENV_SERVICE = "#!/bin/sh\nenv\n"


def clean_env(r: subprocess.CompletedProcess[bytes]) -> list[str]:
    """The service's environment lines; none of the agent's hostile variables is there."""
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert not [line for line in lines if "%bad" in line or line.startswith("QREXECFOO=")]
    return lines


def test_s30_environment_hygiene_dom0_call(host: QrexecHost) -> None:
    w = World(host)
    w.domain("work", 5, agent_env=HOSTILE_ENV)
    w.service("work", "test.Env", ENV_SERVICE)
    lines = clean_env(host.client("-d", "work", "DEFAULT:QUBESRPC test.Env dom0"))
    assert "QREXEC_SERVICE_FULL_NAME=test.Env" in lines
    assert "QREXEC_REQUESTED_TARGET_TYPE=" in lines
    assert any(line.startswith("QREXEC_SERVICE_PATH=") for line in lines)
    assert any(line.startswith("QREXEC_AGENT_PID=") for line in lines)


def test_s30_environment_hygiene_vm_call(host: QrexecHost) -> None:
    w = World(host)
    w.domain("work", 5, agent_env=HOSTILE_ENV)
    w.domain("personal", 6)
    w.service("work", "test.Env", ENV_SERVICE)
    lines = clean_env(w.call("personal", "work", "test.Env"))
    assert "QREXEC_SERVICE_ARGUMENT=" in lines
    assert "QREXEC_SERVICE_FULL_NAME=test.Env+" in lines
