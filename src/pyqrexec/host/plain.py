"""Domains as plain processes sharing one filesystem
(docs/architecture.md#running-one-call-by-hand).

Used by the local demo and the benchmarks: each domain is a `qrexec-agent` with its own
`VCHAN_DOMAIN` and a `qrexec-daemon` in dom0, all under one temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid as uuidlib
from collections.abc import Mapping
from pathlib import Path

from ..system.parent_death import dies_with_this_process
from ..system.programs import program, program_argv

__all__ = ["PlainHost", "PlainDomain"]


def _open_to_all(path: Path) -> bool:
    """Every user may run `path`: it and each directory above it are open to others."""
    try:
        return all(os.stat(p).st_mode & 0o005 == 0o005 for p in (path, *path.parents))
    except OSError:
        return False


class PlainDomain:
    def __init__(self, host: PlainHost, name: str, domid: int, user: str) -> None:
        self.host = host
        self.name = name
        self.domid = domid
        self.user = user
        self.uuid = str(uuidlib.uuid4())
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, agent_env: dict[str, str] | None = None,
              agent_wrapper: list[str] | None = None,
              daemon_env: dict[str, str] | None = None,
              daemon_args: list[str] | None = None) -> PlainDomain:
        """Start agent and daemon; `agent_wrapper` prefixes the agent's argv (e.g. setpriv)."""
        h = self.host
        log = open(h.root / f"{self.name}.log", "ab")  # noqa: SIM115 - handed to children
        env = h.env(self.domid, **(agent_env or {}))
        argv = program_argv("qrexec-agent")
        if agent_wrapper and not _open_to_all(Path(argv[0])):
            # an unprivileged agent may not read the install location (e.g. under /root):
            # run it from the package's own directory, which it must be able to read
            argv = program("qrexec-agent")
            env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        agent = subprocess.Popen(
            [*(agent_wrapper or []), *argv, "-a", str(h.root / f"agent.{self.name}"), "-S"],
            env=env, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, preexec_fn=dies_with_this_process(),
        )
        daemon = subprocess.Popen(
            [*program_argv("qrexec-daemon"), "--direct", f"--uuid={self.uuid}",
             f"--socket-dir={h.socket_dir}", *(daemon_args or []),
             str(self.domid), self.name, self.user],
            env=h.env(0, **(daemon_env or {})), stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, preexec_fn=dies_with_this_process(),
        )
        log.close()
        self.procs = [agent, daemon]
        sock = h.socket_dir / f"qrexec.{self.name}"
        deadline = time.monotonic() + 30
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"domain {self.name} did not start; see {log.name}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


class PlainHost:
    """A temporary directory holding the vchan sockets and dom0's daemon sockets."""

    def __init__(self, base_env: Mapping[str, str], root: str | None = None,
                 keep: bool = False) -> None:
        #: the environment the domains' programs start from (the caller's)
        self.base_env = base_env
        self.root = Path(root or tempfile.mkdtemp(prefix="qrexec-"))
        #: leave the directory (logs) behind on close
        self.keep = keep
        self.vchan_dir = self.root / "vchan"
        self.socket_dir = self.root / "qubes"
        self.vchan_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        # agents may run unprivileged: they create sockets in the root and vchan dirs
        for d in (self.root, self.vchan_dir):
            os.chmod(d, 0o1777)
        self.domains: list[PlainDomain] = []

    def env(self, domid: int, **extra: str) -> dict[str, str]:
        e = {k: v for k, v in self.base_env.items() if not k.startswith(("QREXEC", "VCHAN"))}
        e.update(VCHAN_SOCKET_DIR=str(self.vchan_dir), VCHAN_DOMAIN=str(domid))
        e.update(extra)
        return e

    def add(self, name: str, domid: int, user: str = "root") -> PlainDomain:
        dom = PlainDomain(self, name, domid, user)
        self.domains.append(dom)
        return dom

    def client_argv(self, *args: str) -> list[str]:
        return [*program_argv("qrexec-client"), f"--socket-dir={self.socket_dir}", *args]

    def client_vm_argv(self, domain: str, *args: str) -> list[str]:
        """qrexec-client-vm as run inside `domain` (with `self.env(domid)`)."""
        return [*program_argv("qrexec-client-vm"), "-a", str(self.root / f"agent.{domain}"),
                *args]

    def close(self) -> None:
        for d in self.domains:
            d.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PlainHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
