"""A call process starts nothing before HELLO (docs/reference/protocol.md#dom0-to-vm step 6):
a caller that never listens finds no service run on its behalf, and the process keeps
nothing of the call (it may serve the next one, docs/architecture.md#the-call-spawner)."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import threading
from pathlib import Path

import pytest

from pyqrexec.call import domain_handler
from pyqrexec.call.domain_handler import HandlerContext, run_handler
from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.wire import HEADER, hello
from pyqrexec.system.environment import Environment
from pyqrexec.transport import vchan
from tests.descriptors import open_fds, opened_since


def _context(tmp_path: Path, logged: list[str]) -> HandlerContext:
    env = Environment({"PATH": os.environ.get("PATH", os.defpath),
                       "VCHAN_SOCKET_DIR": str(tmp_path), "VCHAN_DOMAIN": "1",
                       "QREXEC_SERVICE_PATH": str(tmp_path / "rpc"),
                       "QUBES_RPC_CONFIG_PATH": str(tmp_path / "no-config")})
    own = pwd.getpwuid(os.geteuid()).pw_name
    return HandlerContext(env, 3, own, logged.append, ())


@pytest.mark.parametrize("command", ["touch {marker}", "QUBESRPC test.Touch dom0"])
def test_caller_that_never_listens_gets_nothing_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    rpc = tmp_path / "rpc"
    rpc.mkdir()
    marker = tmp_path / "marker"
    service = rpc / "test.Touch"
    service.write_text(f"#!/bin/sh\ntouch {marker}\n")
    service.chmod(0o755)
    monkeypatch.setattr(domain_handler, "DATA_CONNECT_TIMEOUT", 0.3)
    logged: list[str] = []
    ctx = _context(tmp_path, logged)
    before = open_fds()
    cmdline = f"{ctx.own_user}:{command.format(marker=marker)}".encode() + b"\0"
    assert run_handler(MsgType.EXEC_CMDLINE, 0, 513, cmdline, ctx) == 1
    assert any("Data vchan connection failed" in line for line in logged)
    assert not marker.exists()
    # no descriptor of the call is left, and SIGUSR1 is given back
    assert opened_since(before) == {}
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_service_starts_after_hello_once_the_caller_listens(tmp_path: Path) -> None:
    """The caller listens only after the call process has tried a while: the call still
    runs, the service only once the channel is there, and nothing is left over."""
    logged: list[str] = []
    ctx = _context(tmp_path, logged)
    marker = tmp_path / "marker"
    cmdline = f"{ctx.own_user}:touch {marker}; echo done".encode() + b"\0"
    seen: dict[str, object] = {}

    def caller() -> None:
        threading.Event().wait(0.1)  # the handler retries meanwhile
        seen["early"] = marker.exists()
        listener, path = vchan.listen(str(tmp_path), 0, 1, 513, pair_dirs=False)
        with vchan.accept_one(listener, path, 10) as channel:
            seen["hello"] = channel.recv(HEADER.size + 4, socket.MSG_WAITALL)
            channel.sendall(hello(3))
            received = b""
            while chunk := channel.recv(65536):
                received += chunk
            seen["received"] = received

    before = open_fds()
    thread = threading.Thread(target=caller)
    thread.start()
    try:
        status = run_handler(MsgType.EXEC_CMDLINE, 0, 513, cmdline, ctx)
    finally:
        thread.join(10)
    assert status == 0
    assert seen["early"] is False
    assert seen["hello"] == hello(3)
    assert marker.exists()
    received = seen["received"]
    assert isinstance(received, bytes) and b"done\n" in received
    assert opened_since(before) == {}
