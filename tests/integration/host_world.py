"""A qrexec-host world for the integration tests: config, domain roots, a running `up`."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from pyqrexec.host.sandbox import probe_bwrap
from pyqrexec.qubesd.client import call

from .harness import PYTHON, SRC, cleanup_dir, program, wait_for

BWRAP, BWRAP_WHY = probe_bwrap()

#: pytest parameters: every sandbox mode (bubblewrap skipped with the reason it is unusable)
SANDBOX_MODES = [
    "plain",
    pytest.param("bubblewrap", marks=pytest.mark.skipif(
        BWRAP is None, reason=f"bubblewrap unusable: {BWRAP_WHY}")),
]

CONFIG = """\
[domains.dom0]
default_dispvm = "dvm"

[domains.work]
autostart = true
tags = ["work"]

[domains.vault]
label = "black"
user = "nobody"

[domains.other]

[domains.dvm]
template_for_dispvms = true
"""

POLICY = """\
test.Echo * work vault allow
test.Echo * work @dispvm allow
test.Echo * work @dispvm:dvm allow
test.Echo * work other allow
test.Echo * @anyvm @anyvm deny
"""

ECHO = """\
#!/bin/sh
echo "service in $(hostname) from $QREXEC_REMOTE_DOMAIN as $(id -un)"
cat
"""


def service(root: Path, name: str, text: str) -> None:
    d = root / "etc/qubes-rpc"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(textwrap.dedent(text))
    (d / name).chmod(0o755)


def default_layout(top: Path) -> str:
    """The roots of dom0, work, vault, other and dvm under `top`; returns the config."""
    for name in ("dom0", "work", "vault", "other", "dvm"):
        (top / name).mkdir()
    policy = top / "dom0/etc/qubes/policy.d"
    policy.mkdir(parents=True)
    (policy / "30-test.policy").write_text(POLICY)
    for name in ("vault", "other", "dvm"):
        service(top / name, "test.Echo", ECHO)
        (top / name / "secret").write_text(f"secret of {name}\n")
    executable(top / "work/usr/bin/our_test_client", "#!/bin/sh\necho client of work\n")
    return CONFIG


def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


class HostWorld:
    """A config under a short temporary directory and `qrexec-host up` running on it.

    `layout(top)` writes the domains' roots under `top` and returns the config text."""

    def __init__(self, sandbox: str, layout: Callable[[Path], str] = default_layout) -> None:
        self.sandbox = sandbox
        self.dir = Path(tempfile.mkdtemp(prefix="qh", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        self.state = self.dir / "s"
        self.config = self.dir / "host.toml"
        self.config.write_text(layout(self.dir))
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("QREXEC", "VCHAN", "QUBESD"))}
        e["PYTHONPATH"] = SRC
        return e

    def argv(self, *args: str) -> list[str]:
        return [*program("qrexec-host"), f"--config={self.config}",
                f"--state-dir={self.state}", *args]

    def up(self, *extra: str) -> HostWorld:
        """`qrexec-host up` with `extra` options; returns once it says it is up."""
        log = open(self.dir / "up.log", "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(self.argv("up", f"--sandbox={self.sandbox}", *extra),
                                     env=self.env(), stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"up exited: {(self.dir / 'up.log').read_text()}")
            return b"qrexec-host: up;" in (self.dir / "up.log").read_bytes()

        wait_for(ready, 60, "qrexec-host up")
        return self

    def host(self, *args: str, input: bytes | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.argv(*args), input=input, capture_output=True,
                              timeout=timeout, env=self.env())

    def qubesd(self, method: str, dest: str = "dom0", payload: bytes = b"",
               internal: bool = False) -> bytes:
        sock = self.state / ("qubesd.internal.sock" if internal else "qubesd.sock")
        return call(method, dest, payload=payload, path=str(sock))

    def raw(self, request: bytes, internal: bool = False) -> bytes:
        import socket

        sock = self.state / ("qubesd.internal.sock" if internal else "qubesd.sock")
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data

    def domains(self) -> dict[str, dict[str, object]]:
        return {r["name"]: r for r in json.loads(self.qubesd("pyqrexec.host.List"))}

    @property
    def socket_dir(self) -> Path:
        """The daemons' socket directory (qrexec.NAME, qrexec.DOMID, qrexec.uuid:UUID)."""
        return self.state / "qubes"

    def domid(self, name: str) -> int:
        domid = self.domains()[name]["domid"]
        assert isinstance(domid, int), f"{name} is not running"
        return domid

    def log(self) -> str:
        """What `up` has logged so far (qrexec-host's own lines)."""
        return (self.dir / "up.log").read_text(errors="replace")

    def in_domain(self, name: str, argv: list[str], input: bytes | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` inside running domain `name` the way `qrexec-host call` does (its
        sandbox's namespaces, or its plain environment); `{AGENT}` in argv becomes the path
        of the domain's trigger socket as the program sees it."""
        spec = json.loads(self.qubesd("pyqrexec.host.Exec", name))
        argv = [a.replace("{AGENT}", spec["agent_socket"]) for a in argv]
        return subprocess.run([*spec["prefix"], *argv], input=input, capture_output=True,
                              timeout=timeout, env=spec["env"])

    def dom0_env(self) -> dict[str, str]:
        """The environment of a dom0 program talking to the domains' daemons and vchans."""
        e = self.env()
        e.update(VCHAN_DOMAIN="0", VCHAN_SOCKET_DIR=str(self.state / "vchan" / "0"),
                 VCHAN_PAIR_DIRS="1")
        return e

    def client(self, *args: str, input: bytes | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """dom0's `qrexec-client ARGS` against the running domains."""
        return subprocess.run(
            [*program("qrexec-client"), f"--socket-dir={self.socket_dir}", *args],
            input=input, capture_output=True, timeout=timeout, env=self.dom0_env())

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.host("down")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        cleanup_dir(self.dir)


def python_in_domain(code: str) -> list[str]:
    return [PYTHON, "-c", code]
