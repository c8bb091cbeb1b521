"""The scenarios' dom0 around real domains: the real qrexec-policy-daemon deciding every call,
the real qrexec-policy-agent answering asks with a recording answer program, a recorder for
policy.Notify, and a fake qubesd serving the policy.md §12 system info (RemoteVM included,
which qrexec-host cannot host).

Domains are calls.World domains with agents in non-root mode (`nobody` when the tests run as
root, else the test user) and the §12 uuids, so answers naming `target_uuid` reach them.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .calls import NOBODY, World, write_exe
from .harness import PYTHON, SRC, Domain, QrexecHost, cleanup_dir, program, wait_for
from .policy_fakes import FIXTURE, FakePolicyAgent, FakeQubesd

#: the agents' account and the daemons' default user (scenarios.md preamble)
ROOT = os.geteuid() == 0
USER = "nobody" if ROOT else pwd.getpwuid(os.geteuid()).pw_name
UUIDS: dict[str, str] = {
    name: info["uuid"] for name, info in json.loads(FIXTURE.read_text())["domains"].items()
}


class PolicyWorld:
    """`start()` brings up dom0's policy side and the domains `{name: domid}`."""

    def __init__(self, domids: dict[str, int]) -> None:
        # short paths: Unix socket names are limited to 107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="qd", dir="/tmp"))
        self.host = QrexecHost(self.root)
        self.etc = self.root / "policy.d"  # /etc/qubes/policy.d
        self.run = self.root / "run-policy.d"  # /run/qubes/policy.d
        self.legacy = self.root / "legacy"  # /etc/qubes-rpc/policy
        for d in (self.etc, self.run, self.legacy):
            d.mkdir()
        self.qubesd = FakeQubesd(str(self.root / "qubesd.sock"))
        self.notify = FakePolicyAgent(str(self.root / "notify.sock"))
        self.policy_socket = self.root / "policy.sock"
        self.policy_log = self.root / "policy-daemon.log"
        self.program_args = self.root / "policy-program.args"
        self.ask_json = self.root / "ask.json"
        self.answer_file = self.root / "answer"
        self.answer("deny")
        self.daemon: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.world = World(self.host, policy="")
        self.world.policy = self._fallback_program()
        self.domids = domids

    # -- dom0 ------------------------------------------------------------------------------
    def dom0_env(self) -> dict[str, str]:
        return self.host.env(
            0,
            QUBESD_INTERNAL_SOCKET=str(self.root / "qubesd.sock"),
            QUBESD_SOCKET=str(self.root / "qubesd.sock"),
            QREXEC_LEGACY_POLICY_DIR=str(self.legacy),
            QREXEC_SERVICE_PATH=str(self.world.rpc_dir("dom0")),
            QREXEC_POLICY_SOCKET=str(self.policy_socket),
            QREXEC_LOG_DIR=str(self.root / "log"),
        )

    def _fallback_program(self) -> Path:
        """qrexec-policy-exec on the same directories, recording how it was called."""
        return write_exe(self.root / "policy-program",
                         f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{self.program_args}'\n"
                         f"PYTHONPATH={SRC} exec {PYTHON} -m pyqrexec.cli.qrexec_policy_exec "
                         f"--path '{self.run}' --path '{self.etc}' \"$@\"\n")

    def start_policy_daemon(self) -> None:
        argv = [*program("qrexec-policy-daemon"), f"--policy-path={self.run}",
                f"--policy-path={self.etc}", f"--socket-path={self.policy_socket}",
                f"--eval-socket-path={self.root / 'eval.sock'}",
                f"--gui-socket-path={self.root / 'gui.sock'}"]
        with open(self.policy_log, "ab") as log:
            self.daemon = subprocess.Popen(argv, env=self.dom0_env(), stderr=log,
                                           stdin=subprocess.DEVNULL)
        d = self.daemon
        wait_for(lambda: self.policy_socket.exists() or d.poll() is not None, 30,
                 "the policy socket")
        assert d.poll() is None, self.policy_log.read_text()

    def stop_policy_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.terminate()
            self.daemon.wait(30)
            self.daemon = None
        self.policy_socket.unlink(missing_ok=True)

    def _start_policy_agent(self) -> None:
        answer = write_exe(self.root / "answer-program",
                           f"#!/bin/sh\ncat >'{self.ask_json}'\ncat '{self.answer_file}'\n")
        env = self.dom0_env()
        for name in ("DISPLAY", "WAYLAND_DISPLAY"):
            env.pop(name, None)
        sock = self.root / "policy-agent.sock"
        with open(self.root / "policy-agent.log", "ab") as log:
            self.agent = subprocess.Popen(
                [*program("qrexec-policy-agent"), "-s", str(sock), "--answer-program",
                 str(answer)], env=env, stderr=log, stdin=subprocess.DEVNULL)
        wait_for(sock.exists, 30, "the policy agent socket")
        rpc = self.world.rpc_dir("dom0")
        (rpc / "policy.Ask").symlink_to(sock)
        (rpc / "policy.Notify").symlink_to(self.root / "notify.sock")

    def _start_domain(self, name: str, domid: int) -> Domain:
        dom = self.world.domain(name, domid, start=False, user=USER)
        dom.uuid = UUIDS[name]
        env = self.dom0_env()
        dom.daemon_env.update({k: env[k] for k in (
            "QUBESD_INTERNAL_SOCKET", "QUBESD_SOCKET", "QREXEC_LEGACY_POLICY_DIR",
            "QREXEC_POLICY_SOCKET")})
        self.world.start(dom, NOBODY if ROOT else None)
        return dom

    def start(self) -> PolicyWorld:
        self._start_policy_agent()
        self.start_policy_daemon()
        for name, domid in self.domids.items():
            self._start_domain(name, domid)
        return self

    def close(self) -> None:
        self.host.close()
        self.stop_policy_daemon()
        if self.agent is not None:
            self.agent.terminate()
            self.agent.wait(30)
        self.qubesd.close()
        self.notify.close()
        cleanup_dir(self.root)

    # -- per test --------------------------------------------------------------------------
    def reset(self) -> None:
        """No policy at all, no recorded ask, notification or program call; asks denied."""
        for d in (self.etc, self.run, self.legacy):
            for f in d.iterdir():
                f.unlink()
        with self.notify.lock:
            self.notify.requests.clear()
        self.program_args.unlink(missing_ok=True)
        self.answer("deny")

    def policy(self, files: dict[str, str], directory: Path | None = None) -> None:
        """Write `NAME.policy` files (`{"35-compat": text}`) into `directory` (policy.d)."""
        for name, text in files.items():
            (directory or self.etc).joinpath(f"{name}.policy").write_text(text)

    def answer(self, reply: str) -> None:
        self.answer_file.write_text(reply + "\n")
        self.ask_json.unlink(missing_ok=True)

    def log(self) -> str:
        return self.policy_log.read_text(errors="replace")

    def notifications(self) -> list[tuple[bytes, dict[str, str]]]:
        return [(h, json.loads(p)) for h, p in self.notify.received(b"policy.Notify")]

    def call(self, source: str, *args: str,
             input: bytes | None = b"") -> subprocess.CompletedProcess[bytes]:
        return self.world.call(source, *args, input=input)


@contextmanager
def policy_world(domids: dict[str, int]) -> Iterator[PolicyWorld]:
    """The world, started, and closed afterwards (for a module-scoped fixture)."""
    w = PolicyWorld(domids)
    try:
        yield w.start()
    finally:
        w.close()
