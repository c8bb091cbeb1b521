"""Domains for the benchmarks: PlainHost domains plus, when asked, dom0's real policy side
(`qrexec-policy-daemon` answering every VM -> VM call, with a qubesd stand-in serving the
system information it reads at start)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from common import NOBODY
from pyqrexec.host.plain import PlainDomain, PlainHost, program_argv

SERVICE = "test.True"


def _serve_qubesd(path: str, info: bytes) -> None:
    """Answer `internal.GetSystemInfo` (the only qubesd call the policy daemon makes here)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            with conn:
                while conn.recv(4096):
                    pass
                conn.sendall(b"0\0" + info)

    threading.Thread(target=loop, daemon=True).start()


class BenchHost(PlainHost):
    """`domains(...)` starts VMs whose agents run unprivileged or as root, all sharing one
    service directory where `test.True` exits 0."""

    def __init__(self) -> None:
        super().__init__(os.environ)
        os.chmod(self.root, 0o1777)
        self.rpc = self.root / "rpc"
        self.rpc.mkdir()
        svc = self.rpc / SERVICE
        svc.write_text("#!/bin/sh\nexit 0\n")
        svc.chmod(0o755)
        self.policy_socket = str(self.root / "policy.sock")
        self.policy: subprocess.Popen[bytes] | None = None

    def vm(self, name: str, domid: int, *, root: bool = False,
           policy: bool = False) -> PlainDomain:
        """Start VM `name`; `root`: its agent runs as root (else as nobody)."""
        agent_env = {"QREXEC_SERVICE_PATH": str(self.rpc),
                     "QUBES_RPC_CONFIG_PATH": str(self.root / "no-rpc-config")}
        daemon_env = {"QREXEC_POLICY_SOCKET": self.policy_socket} if policy else {}
        dom = self.add(name, domid, user="root" if root else "nobody")
        return dom.start(agent_env=agent_env, agent_wrapper=None if root else NOBODY,
                         daemon_env=daemon_env)

    def start_policy_daemon(self, rules: str) -> subprocess.Popen[bytes]:
        """The real policy daemon over `rules`, knowing every domain added so far."""
        etc = self.root / "policy.d"
        etc.mkdir()
        (etc / "30-bench.policy").write_text(rules)
        domains = {"dom0": {"type": "AdminVM", "uuid": "00000000-0000-0000-0000-000000000000"}}
        for d in self.domains:
            domains[d.name] = {"type": "AppVM", "uuid": d.uuid}
        for info in domains.values():
            info.update(tags=[], default_dispvm=None, template_for_dispvms=False,
                        power_state="Running", label="0xcc0000", icon="appvm-red",
                        guivm=None, relayvm=None, transport_rpc=None, internal=None)
        qubesd = str(self.root / "qubesd.sock")
        _serve_qubesd(qubesd, json.dumps({"domains": domains}).encode())
        env = self.env(0, QUBESD_INTERNAL_SOCKET=qubesd, QUBESD_SOCKET=qubesd,
                       QREXEC_LOG_DIR=str(self.root / "log"),
                       QREXEC_LEGACY_POLICY_DIR=str(self.root / "legacy"))
        log = open(self.root / "policy-daemon.log", "ab")  # noqa: SIM115 - handed over
        self.policy = subprocess.Popen(
            [*program_argv("qrexec-policy-daemon"), f"--policy-path={etc}",
             f"--socket-path={self.policy_socket}",
             f"--eval-socket-path={self.root / 'eval.sock'}",
             f"--gui-socket-path={self.root / 'gui.sock'}"],
            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while not Path(self.policy_socket).exists():
            if self.policy.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the policy daemon did not start; see policy-daemon.log")
            time.sleep(0.02)
        return self.policy

    def pids(self, dom: PlainDomain) -> tuple[int, int]:
        """(agent, daemon) pids of `dom`; the agent behind its setpriv wrapper is the same
        process, since setpriv execs it."""
        agent, daemon = dom.procs
        return agent.pid, daemon.pid

    def close(self) -> None:
        if self.policy is not None and self.policy.poll() is None:
            self.policy.terminate()
            self.policy.wait()
        super().close()
