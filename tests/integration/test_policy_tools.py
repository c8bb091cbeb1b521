"""qrexec-policy-exec and qubes-policy-lint as processes
(docs/reference/cli.md#qrexec-policy-exec, docs/reference/cli.md#qubes-policy-lint)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .fixtures.policy import PolicyDaemon
from .fixtures.processes import SRC, program

W1_LINES = (
    "user=DEFAULT\nresult=allow\ntarget=vault\n"
    "target_uuid=uuid:33333333-3333-3333-3333-333333333333\nautostart=True\n"
    "requested_target=vault\n"
)


def policy_exec(setup: PolicyDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """Run qrexec-policy-exec (with `--path` to the test's directory unless given)."""
    return subprocess.run(
        program("qrexec_policy_exec")
        + ([] if any(a.startswith("--path") for a in args) else [f"--path={setup.etc}"])
        + list(args),
        env=setup.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_three_arguments(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    done = policy_exec(setup, "work", "vault", "test.Svc")
    assert (done.returncode, done.stdout) == (0, W1_LINES)
    assert "qrexec: test.Svc+: work -> vault: allowed to vault" in done.stderr
    done = policy_exec(setup, "--just-evaluate", "personal", "vault", "test.Svc")
    assert (done.returncode, done.stdout) == (1, "")
    done = policy_exec(setup, "--", "personal", "vault", "test.Svc")
    assert (done.returncode, done.stdout) == (1, "result=deny\n")
    assert setup.agent.received(b"policy.Notify")  # the deny notification was sent
    done = policy_exec(setup, "work", "vault")
    assert done.returncode == 2
    assert "Must have 3 or 5 positional arguments, not 2" in done.stderr


def test_path_replaces_defaults(setup: PolicyDaemon) -> None:
    """--path works (upstream crashes) and only the given directories are read."""
    setup.write("30-user.policy", "test.Svc * work vault deny\n", setup.run)
    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    etc, run = f"--path={setup.etc}", f"--path={setup.run}"
    assert policy_exec(setup, etc, "work", "vault", "test.Svc").returncode == 0
    assert policy_exec(setup, run, "work", "vault", "test.Svc").returncode == 1
    assert policy_exec(setup, run, etc, "work", "vault", "test.Svc").returncode == 1
    assert policy_exec(setup, etc, run, "work", "vault", "test.Svc").returncode == 0


def test_assume_yes_and_ask(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", "test.Svc * work @anyvm ask\n")
    done = policy_exec(setup, "--assume-yes-for-ask", "work", "vault", "test.Svc")
    assert (done.returncode, done.stdout) == (0, W1_LINES)
    done = policy_exec(setup, "--assume-yes-for-ask", "work", "@dispvm", "test.Svc")
    assert (done.returncode, done.stdout) == (1, "result=deny\n")
    done = policy_exec(setup, "--just-evaluate", "work", "vault", "test.Svc")
    assert (done.returncode, done.stdout) == (1, "")
    setup.agent.answer = lambda _: b"allow:vault"
    done = policy_exec(setup, "work", "vault", "test.Svc")
    assert (done.returncode, done.stdout) == (0, W1_LINES)
    assert len(setup.agent.received(b"policy.Ask")) == 1


def test_loopback(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", "test.Svc * @anyvm @anyvm allow\n")
    done = policy_exec(setup, "work", "work", "test.Svc")
    assert (done.returncode, done.stdout) == (1, "result=deny\n")
    done = policy_exec(setup, "--just-evaluate", "work", "work", "test.Svc")
    assert (done.returncode, done.stdout) == (0, "")


@pytest.fixture
def fake_client(setup: PolicyDaemon) -> Path:
    """A `qrexec-client` on PATH that records its arguments."""
    bindir = setup.tmp / "bin"
    bindir.mkdir()
    script = bindir / "qrexec-client"
    record = setup.tmp / "client-args"
    script.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"open({str(record)!r}, 'w').write('\\n'.join(sys.argv[1:]))\n"
    )
    script.chmod(0o755)
    setup.env["PATH"] = f"{bindir}{os.pathsep}{setup.env.get('PATH', '')}"
    return record


def test_five_arguments_vm(setup: PolicyDaemon, fake_client: Path) -> None:
    setup.write("30-user.policy", "test.Svc * work vault allow user=root\n")
    setup.qubesd.errors["admin.vm.Start"] = b"2\0QubesVMNotHaltedError\0\0Domain is running\0"
    done = policy_exec(setup, "--", "5", "work", "vault", "test.Svc+x", "SOCKET7")
    assert done.returncode == 0, done.stderr
    assert fake_client.read_text().split("\n") == [
        "-Ed",
        "uuid:33333333-3333-3333-3333-333333333333",
        "-c",
        "SOCKET7,work,5",
        "--",
        "root:QUBESRPC test.Svc+x work",
    ]
    assert b"admin.vm.Start+ dom0 name uuid:33333333-3333-3333-3333-333333333333" in (
        setup.qubesd.methods()
    )


def test_five_arguments_dom0_and_dispvm(setup: PolicyDaemon, fake_client: Path) -> None:
    setup.write("30-user.policy", "test.Svc * work @adminvm allow\ntest.D * work @dispvm allow\n")
    assert policy_exec(setup, "5", "work", "@adminvm", "test.Svc", "ID").returncode == 0
    assert fake_client.read_text().split("\n") == [
        "-Ed", "dom0", "-c", "ID,work,5", "--", "QUBESRPC test.Svc+ work keyword adminvm",
    ]  # fmt: skip
    assert policy_exec(setup, "5", "work", "@dispvm", "test.D", "ID").returncode == 0
    new = "uuid:dddddddd-dddd-dddd-dddd-dddddddddddd"
    assert fake_client.read_text().split("\n") == [
        "-EWkd", new, "-c", "ID,work,5", "--", "DEFAULT:QUBESRPC test.D+ work",
    ]  # fmt: skip
    calls = setup.qubesd.methods()
    assert (
        b"admin.vm.CreateDisposable+ dom0 name uuid:44444444-4444-4444-4444-444444444444" in calls
    )
    assert f"admin.vm.Start+ dom0 name {new}".encode() in calls
    fake_client.unlink()
    assert policy_exec(setup, "5", "personal", "vault", "test.Svc", "ID").returncode == 1
    just = policy_exec(setup, "--just-evaluate", "5", "work", "dom0", "test.Svc", "ID")
    assert just.returncode == 0  # allowed (dom0 forms match each other), but nothing is run
    assert not fake_client.exists()


def test_explain(setup: PolicyDaemon) -> None:
    setup.write(
        "30-user.policy",
        "test.Svc * personal vault allow\ntest.Svc * work sys-usb deny\n"
        "test.Other * @anyvm @anyvm deny\ntest.Svc * work @anyvm allow\n",
    )
    done = policy_exec(setup, "--explain", "work", "vault", "test.Svc")
    assert done.returncode == 0
    policy = setup.etc / "30-user.policy"
    assert done.stdout.splitlines() == [
        "decision: allow",
        "answer: user=DEFAULT",
        "answer: result=allow",
        "answer: target=vault",
        "answer: target_uuid=uuid:33333333-3333-3333-3333-333333333333",
        "answer: autostart=True",
        "answer: requested_target=vault",
        f"rule: {policy}:4: test.Svc\t*\twork\t@anyvm\tallow",
        "considered before (2):",
        f"  {policy}:1: test.Svc\t*\tpersonal\tvault\tallow  (source does not match)",
        f"  {policy}:2: test.Svc\t*\twork\tsys-usb\tdeny  (target does not match)",
    ]
    done = policy_exec(setup, "--explain", "work", "vault", "test.None")
    assert done.returncode == 1
    assert "rule: no matching rule" in done.stdout


def lint(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        program("qubes_policy_lint") + list(args),
        env={**os.environ, "PYTHONPATH": SRC},
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_lint_all_files(tmp_path: Path) -> None:
    (tmp_path / "ok.policy").write_text("# fine\ntest.Svc * work vault allow\n!include x\n")
    (tmp_path / "bad1.policy").write_text(
        "test.Svc * work vault allow default_target=personal\nok.Svc * a b deny\n!include-dir\n"
    )
    (tmp_path / "bad2.policy").write_text("test.Svc * work\n")
    done = lint(tmp_path, "ok.policy", "bad1.policy", "bad2.policy", "missing.policy")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "bad1.policy:1: error: invalid parameters for action Allow: ['default_target=personal']",
        "bad1.policy:3: error: invalid number of params",
        "bad2.policy:1: error: wrong number of fields",
        "missing.policy:0: error: File does not exist.",
    ]
    done = lint(tmp_path, "ok.policy")
    assert (done.returncode, done.stdout) == (0, "")
    done = lint(tmp_path, "-s", "bad2.policy")
    assert done.stdout == "bad2.policy:1: error: wrong number of fields: test.Svc * work\n"


def test_lint_legacy_syntax(tmp_path: Path) -> None:
    (tmp_path / "legacy").write_text("$anyvm $anyvm ask\nwork vault allow,user=root\nfoo bar\n")
    done = lint(tmp_path, "-i", "legacy")
    assert (done.returncode, done.stdout) == (1, "legacy:3: error: wrong number of fields\n")
