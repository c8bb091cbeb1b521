"""The policy Admin API, qubes-policy and qubes-policy-editor as processes
(docs/reference/cli.md#qubes-policy-admin, docs/reference/cli.md#qubes-policy,
docs/reference/cli.md#qubes-policy-editor).

The admin service runs directly with the environment qrexec gives a service, and through real
dom0 -> dom0 calls: the clients find a `qrexec-client` on PATH that runs ours, whose service
directory holds launchers of the admin program for the nine policy.* services.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .fixtures.processes import SRC, program

USER_RULE = "test.Svc * work vault allow\n"
SERVICES = [f"policy.{m}" for m in ("List", "Get", "Replace", "Remove", "GetFiles")] + [
    f"policy.include.{m}" for m in ("List", "Get", "Replace", "Remove")
]


@dataclass
class AdminSetup:
    """dom0's policy files and the admin services' launchers (no qrexec process runs
    until a client calls)."""

    tmp: Path
    policy: Path  # QREXEC_POLICY_DIR
    legacy: Path
    log: Path
    rpc: Path  # dom0's service directory
    bin: Path  # first on the clients' PATH

    @property
    def user(self) -> Path:
        return self.policy / "30-user.policy"

    def service_env(self, full_name: str) -> dict[str, str]:
        """What a service started by qrexec sees
        (docs/reference/cli.md#qubes-policy-admin)."""
        return {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": SRC,
            "QREXEC_SERVICE_FULL_NAME": full_name,
            "QREXEC_REMOTE_DOMAIN": "dom0",
            "QREXEC_POLICY_DIR": str(self.policy),
            "QREXEC_LEGACY_POLICY_DIR": str(self.legacy),
            "QREXEC_POLICY_ADMIN_LOG": str(self.log),
        }

    def client_env(self, **extra: str) -> dict[str, str]:
        """dom0's shell: no VCHAN_DOMAIN, our qrexec-client first on PATH."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QREXEC", "VCHAN"))}
        env.update(
            PATH=f"{self.bin}:{env.get('PATH', '/usr/bin:/bin')}",
            PYTHONPATH=SRC,
            QREXEC_SERVICE_PATH=str(self.rpc),
            TMPDIR=str(self.tmp / "edit"),
        )
        env.update(extra)
        return env


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def dirs(tmp_path: Path) -> AdminSetup:
    w = AdminSetup(
        tmp_path,
        tmp_path / "policy.d",
        tmp_path / "legacy",
        tmp_path / "policy-admin.log",
        tmp_path / "rpc",
        tmp_path / "bin",
    )
    for d in (w.policy, w.rpc, w.bin, tmp_path / "edit"):
        d.mkdir()
    w.user.write_text(USER_RULE)
    python = shlex.quote(sys.executable)
    # a service keeps no QREXEC* variable of its caller's: the launcher names the directories
    settings = "".join(
        f"export {k}={shlex.quote(v)}\n"
        for k, v in w.service_env("").items()
        if k in ("QREXEC_POLICY_DIR", "QREXEC_LEGACY_POLICY_DIR", "QREXEC_POLICY_ADMIN_LOG")
    )
    for service in SERVICES:
        _executable(
            w.rpc / service,
            f"#!/bin/sh\n{settings}exec {python} -m pyqrexec.cli.qubes_policy_admin\n",
        )
    _executable(
        w.bin / "qrexec-client", f'#!/bin/sh\nexec {python} -m pyqrexec.cli.qrexec_client "$@"\n'
    )
    return w


def admin(
    w: AdminSetup, full_name: str, payload: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        program("qubes_policy_admin"),
        input=payload,
        env=w.service_env(full_name),
        capture_output=True,
        timeout=60,
    )


def token(content: bytes) -> bytes:
    return b"sha256:" + hashlib.sha256(content).hexdigest().encode()


# --- the service, run directly -------------------------------------------------------------


def test_s67_tokens(dirs: AdminSetup) -> None:
    done = admin(dirs, "policy.Get+30-user")
    assert (done.returncode, done.stderr) == (0, b"")
    old = USER_RULE.encode()
    assert done.stdout == token(old) + b"\n" + old
    new = b"test.Svc * work vault deny\n"
    done = admin(dirs, "policy.Replace+30-user", token(old) + b"\n" + new)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert dirs.user.read_bytes() == new
    assert stat.S_IMODE(dirs.user.stat().st_mode) == 0o664
    done = admin(dirs, "policy.Replace+30-user", token(old) + b"\nx * a b deny\n")
    assert (done.returncode, done.stderr) == (1, b"PolicyAdminTokenException Token mismatch")
    done = admin(dirs, "policy.Replace+30-user", b"new\nx * a b deny\n")
    assert (done.returncode, done.stderr) == (
        1,
        b"PolicyAdminTokenException File exists but token is 'new'",
    )
    assert dirs.user.read_bytes() == new
    assert not [p for p in dirs.policy.iterdir() if p.name.startswith("!")]
    log = dirs.log.read_text()
    assert "policy.Replace+30-user (dom0)\n" in log
    assert "policy.Replace+30-user (dom0): error: Token mismatch" in log


def test_s68_validation(dirs: AdminSetup) -> None:
    done = admin(dirs, "policy.Replace+30-user", b"any\ntest.Svc * work")
    assert done.returncode == 1
    assert done.stderr == (
        b"PolicyAdminSyntaxException Policy change validation failed: "
        + f"{dirs.user}:1: wrong number of fields".encode()
    )
    assert dirs.user.read_text() == USER_RULE
    (dirs.policy / "include").mkdir()
    (dirs.policy / "include" / "x").write_text("x * a b deny\n")
    dirs.user.write_text(USER_RULE + "!include include/x\n")
    done = admin(dirs, "policy.include.Remove+x", b"any")
    assert done.returncode == 1
    assert done.stderr.startswith(b"PolicyAdminSyntaxException Policy change validation failed: ")
    assert b"including a file that will be removed" in done.stderr
    assert (dirs.policy / "include" / "x").exists()
    done = admin(dirs, "policy.Get+..")
    assert done.returncode == 1
    assert done.stderr.startswith(b"PolicyAdminInvalidFileNameException Invalid policy file name")


def test_list_remove_and_get_files(dirs: AdminSetup) -> None:
    (dirs.policy / "10-a.policy").write_text("other.Svc * a b deny\n")
    (dirs.policy / "README").write_text("not listed\n")
    done = admin(dirs, "policy.List")
    assert (done.returncode, done.stdout) == (0, b"10-a\n30-user\n")
    assert admin(dirs, "policy.include.List").stdout == b""
    done = admin(dirs, "policy.include.Replace+admin-x", b"new\n* * a b deny\n")
    assert done.returncode == 0, done.stderr
    assert admin(dirs, "policy.include.List").stdout == b"admin-x\n"
    dirs.user.write_text(USER_RULE + "!include include/admin-x\n")
    done = admin(dirs, "policy.GetFiles+test.Svc")
    assert (done.returncode, done.stdout) == (0, b"30-user\nadmin-x\n")
    done = admin(dirs, "policy.Remove+10-a", b"new")
    assert done.stderr == b"PolicyAdminTokenException File exists but token is 'new'"
    done = admin(dirs, "policy.Remove+10-a", b"any")
    assert (done.returncode, done.stderr) == (0, b"")
    assert not (dirs.policy / "10-a.policy").exists()
    done = admin(dirs, "policy.Remove+10-a", b"any")
    assert (done.returncode, done.stderr) == (
        1,
        f"PolicyAdminFileNotFoundException Not found: {dirs.policy}/10-a.policy".encode(),
    )


def test_protocol_errors_and_internal_error(dirs: AdminSetup) -> None:
    done = admin(dirs, "policy.List+x")
    assert done.stderr == b"PolicyAdminProtocolException Unexpected argument"
    done = admin(dirs, "policy.Get+30-user", b"payload")
    assert done.stderr == b"PolicyAdminProtocolException Unexpected payload"
    done = admin(dirs, "policy.Replace+30-user", b"any")
    assert done.stderr == (
        b"PolicyAdminProtocolException Payload needs to include first line with token"
    )
    done = admin(dirs, "policy.GetFiles+a+b")
    assert done.stderr == (
        b"PolicyAdminProtocolException Service 'a+b' contains invalid characters: ('+',)"
    )
    (dirs.policy / "40-Bad.policy").write_text("")  # makes the whole policy invalid
    done = admin(dirs, "policy.Replace+30-user", b"any\n" + USER_RULE.encode())
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr == f"Internal error. See {str(dirs.log)!r} in dom0 for details.".encode()
    assert "Traceback" in dirs.log.read_text()


# --- qubes-policy through qrexec-client -----------------------------------------------------


def policy(
    w: AdminSetup, *args: str, input: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        program("qubes_policy") + list(args),
        input=input,
        env=w.client_env(),
        capture_output=True,
        timeout=60,
    )


def test_s69_qubes_policy(dirs: AdminSetup) -> None:
    (dirs.policy / "10-a.policy").write_text("")
    done = policy(dirs, "-l")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"10-a\n30-user\n", b"")
    assert policy(dirs).stdout == b"10-a\n30-user\n"
    done = policy(dirs, "-g", "30-user")
    assert (done.returncode, done.stdout) == (0, USER_RULE.encode())
    done = policy(dirs, "-r", "30-user", input=b"test.Svc * work vault deny\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert dirs.user.read_text() == "test.Svc * work vault deny\n"
    done = policy(dirs, "-l", "30-user")
    assert done.returncode == 2
    assert b"qubes-policy: error: --list doesn't work with a file name" in done.stderr
    done = policy(dirs, "-g")
    assert done.returncode == 2
    assert b"qubes-policy: error: you need to provide a file name" in done.stderr
    done = policy(dirs, "-g", "a/b")
    assert done.returncode == 2
    assert b"qubes-policy: error: invalid character(s) in RPCNAME: '/'" in done.stderr


def test_qubes_policy_include_and_errors(dirs: AdminSetup) -> None:
    done = policy(dirs, "-r", "include/x", input=b"x * a b deny\n")
    assert done.returncode == 0, done.stderr
    assert policy(dirs, "-l", "include").stdout == b"x\n"
    assert policy(dirs, "-g", "include/x").stdout == b"x * a b deny\n"
    done = policy(dirs, "-g", "missing")
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr == f"Not found: {dirs.policy}/missing.policy\n".encode()
    done = policy(dirs, "-r", "30-user", input=b"test.Svc * work\n")
    assert done.returncode == 1
    assert done.stderr == (
        f"Policy change validation failed: {dirs.user}:1: wrong number of fields\n".encode()
    )
    assert policy(dirs, "-d", "include/x").returncode == 0
    assert policy(dirs, "-l", "include/").stdout == b""
    (dirs.rpc / "policy.List").unlink()  # the call itself fails
    done = policy(dirs, "-l")
    assert done.returncode == 1
    assert done.stderr.startswith(b"Command failed")


def test_call_argv_in_a_vm() -> None:
    from pyqrexec.client.policy_admin import call_argv
    from pyqrexec.system.environment import Environment

    argv = call_argv("policy.Get+30-user", Environment({"VCHAN_DOMAIN": "3"}))
    assert argv[0].endswith("qrexec-client-vm") or "pyqrexec.cli.qrexec_client_vm" in argv
    assert argv[-3:] == ["--", "dom0", "policy.Get+30-user"]
    argv = call_argv("policy.List", Environment({}))
    assert argv[-3:] == ["-d", "dom0", "DEFAULT:QUBESRPC policy.List dom0"]


# --- qubes-policy-editor ----------------------------------------------------------------------


def editor(
    w: AdminSetup, script: str, *args: str, input: bytes = b""
) -> subprocess.CompletedProcess[str]:
    path = w.tmp / "edit.sh"
    _executable(path, "#!/bin/sh\n" + script)
    return subprocess.run(
        program("qubes_policy_editor") + list(args),
        input=input.decode(),
        env=w.client_env(EDITOR=str(path), VISUAL=""),
        capture_output=True,
        text=True,
        timeout=120,
    )


def leftovers(w: AdminSetup) -> list[str]:
    return sorted(p.name for p in (w.tmp / "edit").iterdir())


def test_editor_edits_the_file(dirs: AdminSetup) -> None:
    # the editor is called as `EDITOR -- FILE`
    done = editor(dirs, '[ "$1" = -- ] && sed -i s/allow/deny/ "$2"\n')
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert dirs.user.read_text() == "test.Svc * work vault deny\n"
    assert leftovers(dirs) == []
    # include files are linted in the legacy syntax of !include-service files
    done = editor(dirs, 'echo "work vault allow" > "$2"\n', "include/new")
    assert done.returncode == 0, done.stderr
    assert (dirs.policy / "include" / "new").read_text() == "work vault allow\n"


def test_editor_quits_on_lint_errors(dirs: AdminSetup) -> None:
    done = editor(dirs, 'echo "test.Svc * work" > "$2"\n', input=b"x\nq\n")
    assert done.returncode == 0
    (kept,) = leftovers(dirs)
    assert kept.endswith("_30-user.policy")
    assert done.stdout == f"{dirs.tmp}/edit/{kept}:1: error: wrong number of fields\n"
    assert done.stderr == (
        "Linting failed, do you want to:\n  (e)dit again\n  (q)uit without saving changes?\n"
        "What now? What now? "
    )
    assert dirs.user.read_text() == USER_RULE


def test_editor_edits_again_after_lint_errors(dirs: AdminSetup) -> None:
    count = dirs.tmp / "count"
    script = (
        f'echo x >> {count}\nif [ "$(wc -l < {count})" -eq 1 ]; then echo "broken" > "$2"\n'
        'else echo "test.Svc * work vault deny" > "$2"; fi\n'
    )
    done = editor(dirs, script, "40-new.policy", input=b"e\n")
    assert done.returncode == 0, done.stderr
    assert count.read_text() == "x\nx\n"
    assert (dirs.policy / "40-new.policy").read_text() == "test.Svc * work vault deny\n"
    assert leftovers(dirs) == []


def test_editor_names_and_refusals(dirs: AdminSetup) -> None:
    done = editor(dirs, "exit 0\n", "a/b$")
    assert (done.returncode, done.stdout) == (1, "invalid character(s) in the file name: '$/'\n")
    done = editor(dirs, "exit 3\n")
    assert done.returncode == 1
    assert done.stderr.startswith("Failed to open editor: ")
    before = leftovers(dirs)
    # someone else changes the file meanwhile: the token no longer matches
    done = editor(dirs, f'echo "x * a b deny" > {dirs.user}\necho "y * a b deny" > "$2"\n')
    assert done.returncode == 1
    (kept,) = set(leftovers(dirs)) - set(before)
    assert done.stderr == (
        f"Failed to replace policy '30-user' with file '{dirs.tmp}/edit/{kept}': "
        "Token mismatch\n"
    )
    assert dirs.user.read_text() == "x * a b deny\n"


# --- qrexec-host's dom0 services --------------------------------------------------------------


def test_host_installs_the_admin_services(tmp_path: Path) -> None:
    from pyqrexec.host.dom0_side import DOM0_SERVICES, dom0_service_settings
    from pyqrexec.host.launchers import write_launcher
    from pyqrexec.host.paths import Paths

    assert {s for s, name in DOM0_SERVICES.items() if name == "qubes-policy-admin"} == set(
        SERVICES
    )
    paths = Paths.make(tmp_path / "state", tmp_path / "dom0", {})
    env = paths.dom0_env({"PATH": os.environ["PATH"]})
    assert env["QREXEC_POLICY_ADMIN_LOG"] == str(paths.log_dir / "policy-admin.log")
    paths.policy_dir.mkdir(parents=True)
    paths.log_dir.mkdir(parents=True)
    (paths.policy_dir / "30-user.policy").write_text(USER_RULE)
    launcher = tmp_path / "policy.List"
    write_launcher(launcher, "qubes-policy-admin", env=dom0_service_settings(env))
    # what a service gets: its caller's QREXEC* variables are gone
    service_env = {"PATH": os.environ["PATH"], "PYTHONPATH": SRC,
                   "QREXEC_SERVICE_FULL_NAME": "policy.List", "QREXEC_REMOTE_DOMAIN": "dom0"}
    done = subprocess.run([str(launcher)], env=service_env, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"30-user\n", b"")
    assert "policy.List (dom0)" in (paths.log_dir / "policy-admin.log").read_text()
