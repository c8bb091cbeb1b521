"""The agent's side of the fork server: which requests go there, where, and as what bytes
(docs/reference/protocol.md#fork-server-socket)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from pathlib import Path

import pytest

from pyqrexec.agent.fork_client import (
    Handover,
    connect_handover,
    fork_server_allowed,
    fork_server_path,
    hand_over,
    prepare_handover,
    watch_until_eof,
)
from pyqrexec.protocol.cmdline import parse_command
from pyqrexec.protocol.constants import MsgType
from pyqrexec.services.rpcconfig import DEFAULT_CONFIG, ServiceConfig
from pyqrexec.system.defaults import FORK_SERVER_SOCKET_TEMPLATE
from pyqrexec.transport.aio import BackgroundTasks

T = "/run/fs.%s.sock"


def prepare(cmdline: bytes, config: ServiceConfig | None = DEFAULT_CONFIG, template: str | None = T,
            own_user: str | None = None, msgtype: int = MsgType.EXEC_CMDLINE) -> Handover | None:
    return prepare_handover(template, msgtype, 3, 517, cmdline, config, own_user)


def test_service_request_bytes() -> None:
    h = prepare(b"user:QUBESRPC test.Svc+arg work")
    assert h is not None
    assert h.path == "/run/fs.user.sock"
    text = b"QUBESRPC test.Svc+arg work\0"
    assert h.request == struct.pack("<iiiI", 0x200, 3, 517, len(text)) + text


def test_just_exec_and_shell_command() -> None:
    h = prepare(b"alice:echo a:b", msgtype=MsgType.JUST_EXEC)
    assert h == Handover("/run/fs.alice.sock",
                         struct.pack("<iiiI", 0x201, 3, 517, 9) + b"echo a:b\0")


@pytest.mark.parametrize("template", [None, ""])
def test_disabled(template: str | None) -> None:
    assert prepare(b"user:true", template=template) is None


def test_nogui_is_never_handed_over() -> None:
    assert prepare(b"user:nogui:QUBESRPC test.Svc work") is None
    assert prepare(b"user:nogui:true") is None


@pytest.mark.parametrize("key", ["skip_service_descriptor", "exit_on_client_eof",
                                 "exit_on_service_eof"])
def test_socket_settings_keep_the_call_in_the_agent(key: str) -> None:
    config = ServiceConfig(**{key: True})  # type: ignore[arg-type]
    assert prepare(b"user:QUBESRPC test.Svc work", config) is None
    assert not fork_server_allowed(parse_command(b"QUBESRPC test.Svc work"), config)


def test_config_not_loaded() -> None:
    # shell commands have no rpc-config: the defaults
    assert prepare(b"user:true", None) is not None
    # a service whose rpc-config could not be read: the agent's handler reports 125
    assert prepare(b"user:QUBESRPC test.Svc work", None) is None


def test_wait_for_session_does_not_matter() -> None:
    assert prepare(b"user:QUBESRPC test.Svc work", ServiceConfig(wait_for_session=True))


def test_force_user_picks_the_fork_server() -> None:
    h = prepare(b"user:QUBESRPC test.Svc work", ServiceConfig(force_user="bob"))
    assert h is not None and h.path == "/run/fs.bob.sock"
    # the cmdline still goes without any USER: part
    assert h.request[16:] == b"QUBESRPC test.Svc work\0"


def test_non_root_agent_only_uses_its_own_users_server() -> None:
    assert prepare(b"bob:true", own_user="alice") is None
    assert prepare(b"alice:true", own_user="alice") is not None
    assert prepare(b"bob:QUBESRPC s w", ServiceConfig(force_user="alice"), own_user="alice")


@pytest.mark.parametrize("cmdline", [b"no-colon", b"user:QUBESRPCx", b"user:QUBESRPC s",
                                     b"user:QUBESRPC  w", b"user:QUBESRPC s "])
def test_unparsable_commands_stay_in_the_agent(cmdline: bytes) -> None:
    assert prepare(cmdline) is None


def test_path_template() -> None:
    assert (fork_server_path(FORK_SERVER_SOCKET_TEMPLATE, "user")
            == "/var/run/qubes/qrexec-server.user.sock")
    assert fork_server_path("/a/%s/%s", "u") == "/a/u/%s"
    assert fork_server_path("/a/shared.sock", "u") == "/a/shared.sock"


# --- connecting -----------------------------------------------------------------------------


def _handover(path: Path) -> Handover:
    h = prepare(b"u:QUBESRPC test.Svc work", template=str(path))
    assert h is not None
    return h


def test_no_server_falls_back_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyqrexec.agent.fork_client")
    assert connect_handover(_handover(tmp_path / "none.sock")) is None
    # a socket file nobody listens on: ECONNREFUSED
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    assert connect_handover(_handover(tmp_path / "dead.sock")) is None
    assert asyncio.run(_hand_over(_handover(tmp_path / "dead.sock"))) is None
    assert caplog.messages == []


def test_other_errors_are_logged_and_fall_back(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyqrexec.agent.fork_client")
    (tmp_path / "file").write_text("")
    assert connect_handover(_handover(tmp_path / "file" / "x")) is None
    assert len(caplog.messages) == 1 and f"[Errno {errno.ENOTDIR}]" in caplog.messages[0]


async def _hand_over(h: Handover) -> socket.socket | None:
    return await hand_over(asyncio.get_running_loop(), h)


@pytest.mark.parametrize("form", ["sync", "async"])
def test_request_sent_and_eof_reported(tmp_path: Path, form: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyqrexec.agent.fork_client")
    path = tmp_path / "fs.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    h = _handover(path)

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        if form == "sync":
            sock = connect_handover(h)
        else:
            sock = await hand_over(loop, h)
        assert sock is not None and caplog.messages == []
        conn, _ = server.accept()
        received = b""
        while len(received) < len(h.request):
            received += conn.recv(65536)
        finished = asyncio.Event()
        tasks = BackgroundTasks()
        watch_until_eof(loop, sock, finished.set, tasks=tasks)
        conn.sendall(b"stray bytes are ignored")
        await asyncio.sleep(0.05)
        assert not finished.is_set()
        conn.close()
        await asyncio.wait_for(finished.wait(), 10)
        assert sock.fileno() == -1
        return received

    try:
        assert asyncio.run(scenario()) == h.request
    finally:
        server.close()
