"""policy.RegisterArgument run as a process with the environment a dom0 service gets
(docs/reference/cli.md#policyregisterargument), without the domains: test_host_policy_tools.py makes
the whole call."""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyqrexec.cli import policy_register_argument

from .fixtures.processes import SRC, program

GRANT = "policy.RegisterArgument +u2f.Authenticate sys-usb @anyvm allow target=dom0\n"
LINE = "u2f.Authenticate +KEY1 work sys-usb allow\n"


@dataclass
class Dom0:
    policy: Path
    logs: Path
    legacy: Path

    @property
    def registered(self) -> Path:
        return self.policy / "60-registered-arguments.policy"

    @property
    def log(self) -> str:
        path = self.logs / "policy-register.log"
        return path.read_text() if path.exists() else ""

    def env(self, **call: str) -> dict[str, str]:
        """A dom0 service's environment for sys-usb calling
        `policy.RegisterArgument+u2f.Authenticate` with target `work`
        (docs/reference/services.md#arguments-and-environment)."""
        e = {k: v for k, v in os.environ.items() if not k.startswith("QREXEC")}
        e.update(
            PYTHONPATH=SRC,
            QREXEC_POLICY_DIR=str(self.policy),
            QREXEC_LOG_DIR=str(self.logs),
            QREXEC_LEGACY_POLICY_DIR=str(self.legacy),
            QREXEC_SERVICE_FULL_NAME="policy.RegisterArgument+u2f.Authenticate",
            QREXEC_REMOTE_DOMAIN="sys-usb",
            QREXEC_SERVICE_ARGUMENT="u2f.Authenticate",
            QREXEC_REQUESTED_TARGET_TYPE="name",
            QREXEC_REQUESTED_TARGET="work",
        )
        e.update(call)
        return {k: v for k, v in e.items() if v != "-"}  # "-": unset

    def start(self, **call: str) -> subprocess.Popen[bytes]:
        # argv[1] is the argument, as the service runner passes it; the service does not use it
        return subprocess.Popen(
            [*program("policy-register-argument"), call.get("QREXEC_SERVICE_ARGUMENT",
                                                            "u2f.Authenticate")],
            env=self.env(**call), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)

    def register(self, data: bytes, **call: str) -> subprocess.CompletedProcess[bytes]:
        proc = self.start(**call)
        out, err = proc.communicate(data, timeout=60)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def dom0(tmp_path: Path) -> Iterator[Dom0]:
    d = Dom0(tmp_path / "policy.d", tmp_path / "log", tmp_path / "legacy")
    d.policy.mkdir()
    d.logs.mkdir()
    (d.policy / "30-user.policy").write_text(GRANT)
    yield d


def test_s70_register_then_refuse(dom0: Dom0) -> None:
    done = dom0.register(b"KEY1")
    assert (done.returncode, done.stdout) == (0, b""), done.stderr
    assert dom0.registered.read_text() == LINE
    assert "sys-usb -> work: u2f.Authenticate +KEY1: registered: " + LINE.strip() in dom0.log

    done = dom0.register(b"KEY1")
    assert done.returncode == 1
    assert b"refused: argument already registered" in done.stderr
    assert dom0.log.endswith("sys-usb -> work: u2f.Authenticate +KEY1: "
                             "refused: argument already registered\n")

    for data, message in ((b"KEY/1", "invalid argument"), (b"K" * 65, "argument too long"),
                          (b"", "empty argument"), (b"KEY2\n", "invalid argument")):
        done = dom0.register(data)
        assert done.returncode == 1, data
        assert dom0.log.endswith(f"refused: {message}\n"), (data, dom0.log)
    assert dom0.registered.read_text() == LINE

    done = dom0.register(b"KEY2")
    assert done.returncode == 0, done.stderr
    assert dom0.registered.read_text() == LINE + LINE.replace("KEY1", "KEY2")


def test_hostile_argument_is_logged_escaped(dom0: Dom0) -> None:
    done = dom0.register(b"KEY\n1\x1b[2J\\")
    assert done.returncode == 1
    last = dom0.log.splitlines()[-1]
    assert last.endswith(r"u2f.Authenticate +KEY\n1\x1b[2J\\: refused: invalid argument")
    assert not dom0.registered.exists()


def test_keyword_target_refused(dom0: Dom0) -> None:
    done = dom0.register(b"KEY1", QREXEC_REQUESTED_TARGET="-",
                         QREXEC_REQUESTED_TARGET_TYPE="keyword",
                         QREXEC_REQUESTED_TARGET_KEYWORD="default")
    assert done.returncode == 1
    assert "-> (unset): u2f.Authenticate +KEY1: refused: the call must name the frontend" \
        in dom0.log
    assert not dom0.registered.exists()


def test_no_service_or_wildcard_target_refused(dom0: Dom0) -> None:
    assert dom0.register(b"KEY1", QREXEC_SERVICE_ARGUMENT="-").returncode == 1
    assert dom0.log.endswith("refused: no service to register "
                             "(call policy.RegisterArgument+SERVICE)\n")
    assert dom0.register(b"KEY1", QREXEC_REQUESTED_TARGET="*").returncode == 1
    assert dom0.log.endswith("refused: invalid frontend '*': not a qube name\n")
    assert not dom0.registered.exists()


def test_broken_policy_refuses(dom0: Dom0) -> None:
    (dom0.policy / "40-broken.policy").write_text("test.Svc * work\n")
    done = dom0.register(b"KEY1")
    assert done.returncode == 1
    assert "refused: cannot load the policy: " in dom0.log
    assert "40-broken.policy:1: wrong number of fields" in dom0.log
    assert not dom0.registered.exists()


def test_legacy_policy_is_followed(dom0: Dom0) -> None:
    """`!compat-4.0` brings in the legacy files: an argument with a legacy file is taken."""
    dom0.legacy.mkdir()
    (dom0.legacy / "u2f.Authenticate+KEY1").write_text("sys-usb work allow\n")
    assert dom0.register(b"KEY1").returncode == 0  # no !compat-4.0: not part of the policy
    dom0.registered.unlink()
    (dom0.policy / "35-compat.policy").write_text("!compat-4.0\n")
    assert dom0.register(b"KEY1").returncode == 1
    assert dom0.log.endswith("refused: argument already registered\n")
    assert not dom0.registered.exists()


def test_open_last_line_is_closed_first(dom0: Dom0) -> None:
    dom0.registered.write_text("u2f.Authenticate +OLD work sys-usb allow")
    assert dom0.register(b"KEY1").returncode == 0
    assert dom0.registered.read_text() == "u2f.Authenticate +OLD work sys-usb allow\n" + LINE


def test_waits_for_the_policy_directory_lock(dom0: Dom0) -> None:
    fd = os.open(dom0.policy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = dom0.start()
        assert proc.stdin is not None
        proc.stdin.write(b"KEY1")
        proc.stdin.close()
        time.sleep(1)  # whether or not it has reached the lock yet, it must not have written
        assert proc.poll() is None
        assert not dom0.registered.exists()
    finally:
        os.close(fd)
    assert proc.wait(60) == 0
    assert dom0.registered.read_text() == LINE


def test_missing_policy_dir_or_log_dir(dom0: Dom0, tmp_path: Path) -> None:
    done = dom0.register(b"KEY1", QREXEC_LOG_DIR=str(tmp_path / "nowhere"))
    assert done.returncode == 0
    assert b"registered: " in done.stderr and b"cannot write" in done.stderr
    done = dom0.register(b"KEY2", QREXEC_POLICY_DIR=str(tmp_path / "missing"))
    assert done.returncode == 1
    assert "refused: cannot lock the policy directory" in dom0.log


def test_runtime_directory_is_part_of_the_policy(
    dom0: Dom0, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole policy is both directories; the runtime one (fixed at /run/qubes/policy.d)
    is swapped for a test directory in-process."""
    runtime = tmp_path / "run-policy.d"
    runtime.mkdir()
    (runtime / "20-runtime.policy").write_text("u2f.Authenticate +KEY1 work sys-usb deny\n")
    monkeypatch.setattr("pyqrexec.policy.loaders.DEFAULT_POLICY_DIRS",
                        (str(runtime), "/etc/qubes/policy.d"))
    env = dom0.env()

    assert policy_register_argument.main(env, io.BytesIO(b"KEY1")) == 1
    assert dom0.log.endswith("refused: argument already registered\n")
    assert policy_register_argument.main(env, io.BytesIO(b"KEY2")) == 0
    assert dom0.registered.read_text() == LINE.replace("KEY1", "KEY2")
