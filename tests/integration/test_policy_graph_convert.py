"""qrexec-policy-graph and qrexec-legacy-convert as processes
(docs/reference/cli.md#qrexec-policy-graph, docs/reference/cli.md#qrexec-legacy-convert)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .fixtures.fakes import FIXTURE
from .fixtures.policy import PolicyDaemon
from .fixtures.processes import program

S71_POLICY = "test.Service * work personal allow\ntest.Service * sys-usb personal ask\n"
S71_OUTPUT = (
    "digraph g {\n"
    '  "work" [color = "#cc0000", penwidth = 3];\n'
    '  "personal" [color = "#cc0000", penwidth = 3];\n'
    '  "work" -> "personal" [label="test.Service" color=red];\n'
    "}\n"
)
HEADING = "\n# Policy rules in this file were automatically converted from old\n"
SUCCESS = "Successfully converted old policy to new format.\n"


def graph(setup: PolicyDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        program("qrexec_policy_graph") + list(args),
        env=setup.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_s71_graph_from_a_system_info_file(setup: PolicyDaemon) -> None:
    setup.write("10-test.policy", S71_POLICY)
    base = ["--policy-dir", str(setup.etc), "--system-info", str(FIXTURE)]
    done = graph(setup, *base)
    assert (done.returncode, done.stdout, done.stderr) == (0, S71_OUTPUT, "")
    done = graph(setup, *base, "--include-ask")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[:4] == S71_OUTPUT.splitlines()[:4]
    assert lines[4:] == [
        '  "sys-usb" [color = "#cc0000", penwidth = 3];',
        '  "sys-usb" -> "personal" [label="test.Service" color=orange];',
        "}",
    ]
    assert not setup.qubesd.requests  # the file was used, qubesd never asked


def test_graph_asks_qubesd_and_writes_output(setup: PolicyDaemon) -> None:
    setup.write("10-test.policy", S71_POLICY)
    out = setup.tmp / "g.dot"
    # the default directory is $QREXEC_POLICY_DIR (ext)
    setup.env["QREXEC_POLICY_DIR"] = str(setup.etc)
    done = graph(setup, "--output", str(out))
    assert (done.returncode, done.stdout) == (0, "")
    assert out.read_text() == S71_OUTPUT
    assert setup.qubesd.methods() == [b"internal.GetSystemInfo+ dom0 name dom0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "work", "@dispvm"], "--source @dispvm is not a valid call source"),
        (["--target", "@anyvm"], "--target @anyvm is not a valid actual call target"),
    ],
)
def test_graph_option_errors(setup: PolicyDaemon, args: list[str], message: str) -> None:
    done = graph(setup, "--policy-dir", str(setup.etc), "--system-info", str(FIXTURE), *args)
    assert done.returncode == 2
    assert f"qrexec-policy-graph: error: {message}" in done.stderr
    assert done.stdout == ""


def test_graph_failures_exit_1(setup: PolicyDaemon) -> None:
    setup.write("10-test.policy", "test.Service * work\n")
    done = graph(setup, "--policy-dir", str(setup.etc), "--system-info", str(FIXTURE))
    assert done.returncode == 1
    assert "10-test.policy:1: wrong number of fields" in done.stderr
    done = graph(setup, "--policy-dir", str(setup.etc), "--system-info", str(setup.tmp / "none"))
    assert done.returncode == 1
    assert "error getting system info" in done.stderr


# -- qrexec-legacy-convert ------------------------------------------------------------------


def convert(setup: PolicyDaemon, answer: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        program("qrexec_legacy_convert"),
        env={**setup.env, "QREXEC_POLICY_DIR": str(setup.etc)},
        input=answer,
        capture_output=True,
        text=True,
        timeout=120,
    )


def policy_exec(setup: PolicyDaemon, source: str, target: str, service: str) -> tuple[int, str]:
    done = subprocess.run(
        program("qrexec_policy_exec") + [f"--path={setup.etc}", source, target, service],
        env=setup.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout


def legacy_world(setup: PolicyDaemon, files: dict[str, str]) -> None:
    setup.write("35-compat.policy", "!compat-4.0\n")
    setup.legacy.mkdir()
    for name, text in files.items():
        (setup.legacy / name).write_text(text)


def listing(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


CALLS = [
    ("work", "vault", "test.Svc+a"),
    ("work", "vault", "test.Svc+b"),
    ("personal", "vault", "test.Svc+a"),
    ("work", "personal", "test.Svc+a"),
    ("work", "vault", "test.Other"),
    ("personal", "work", "test.Other"),
]


def test_s74_convert(setup: PolicyDaemon) -> None:
    legacy_world(
        setup,
        {
            "test.Svc+a": "work vault allow\n",
            "test.Other": "$anyvm vault allow,user=root\n$anyvm $anyvm deny\n",
            "test.Svc+a.rpmsave": "an earlier conversion\n",
        },
    )
    before = [policy_exec(setup, *call) for call in CALLS]
    done = convert(setup)
    assert done.returncode == 0, done.stdout + done.stderr
    user = setup.etc / "30-user.policy"
    assert done.stdout == (
        "Initiating policy conversion process...\n"
        "Converting old policy files into new format files....\n"
        f"Writing {user}...\n" + SUCCESS
    )
    assert user.read_text() == (
        HEADING + "# policy format. Old files can be found in /etc/qubes-rpc/policy; they have\n"
        "# the suffix .rpmsave.\n\n"
        "# All rules pertaining to qubes.Gpg were moved to this file. If you want to\n"
        "# move them to the relevant GUI config file, see 50-config-splitgpg. Caution:\n"
        "# the GUI tool for qubes.Gpg policy supports only policy rules that have a\n"
        "# single vm as a target.\n"
        "test.Other\t*\t@anyvm\tvault\tallow user=root\n"
        "test.Svc\t+a\twork\tvault\tallow\n"
    )
    assert listing(setup.legacy) == {
        "test.Other.rpmsave": "$anyvm vault allow,user=root\n$anyvm $anyvm deny\n",
        "test.Svc+a.rpmsave": "an earlier conversion\n",
        "test.Svc+a.rpmsave.rpmsave": "work vault allow\n",
    }
    assert sorted(p.name for p in setup.etc.iterdir()) == ["30-user.policy", "35-compat.policy"]
    # calls behave as before
    assert [policy_exec(setup, *call) for call in CALLS] == before
    assert before[0][0] == 0 and before[2][0] == 1 and before[4][0] == 0


def test_convert_prepends_to_existing_files_with_backups(setup: PolicyDaemon) -> None:
    legacy_world(
        setup,
        {"qubes.Filecopy": "work personal ask\n", "qubes.Gpg": "work vault allow\n"},
    )
    setup.write("30-user.policy", "# mine\ntest.Mine * work vault allow\n")
    setup.write("30-user.policy.bak", "an old backup\n")
    tool = "\n# THIS IS AN AUTOMATICALLY GENERATED POLICY FILE.\n"
    tool += "# Any changes made manually may be overwritten by Qubes Configuration Tools.\n"
    setup.write("50-config-filecopy.policy", tool + "\nqubes.Filecopy * work vault deny\n")
    done = convert(setup)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Writing {setup.etc / '30-user.policy'}...\n" in done.stdout
    assert f"Writing {setup.etc / '50-config-filecopy.policy'}...\n" in done.stdout
    user = (setup.etc / "30-user.policy").read_text()
    assert user.endswith("qubes.Gpg\t*\twork\tvault\tallow\n# mine\ntest.Mine * work vault allow\n")
    assert (setup.etc / "30-user.policy.bak.bak").read_text().startswith("# mine\n")
    assert (setup.etc / "30-user.policy.bak").read_text() == "an old backup\n"
    assert (setup.etc / "50-config-filecopy.policy").read_text() == (
        tool + "qubes.Filecopy\t*\twork\tpersonal\task\nqubes.Filecopy * work vault deny\n"
    )


# Converting a file with an argument drops its synthetic denies, so a later +a rule that was
# shadowed before now applies: the graphs differ.
SHADOWED = "test.Svc +a @anyvm @anyvm ask\n"


def changing_world(setup: PolicyDaemon) -> tuple[dict[str, str], dict[str, str]]:
    legacy_world(setup, {"test.Svc+a": "work vault allow\n"})
    setup.write("90-default.policy", SHADOWED)
    return listing(setup.etc), listing(setup.legacy)


def test_convert_difference_reverted(setup: PolicyDaemon) -> None:
    etc, legacy = changing_world(setup)
    done = convert(setup, "Y\n")
    assert done.returncode == 1
    out = done.stdout.splitlines()
    assert out[3] == (
        "ERROR: Found the following differences between previous and converted policy states:"
    )
    assert out[4:6] == ["OLD STATE", "NEW STATE"]
    assert '  "personal" -> "vault" [label="test.Svc+a ask" color=orange];' in out
    assert out[-1] == "Do you want to restore initial state? [Y/n] Conversion reverted."
    assert (listing(setup.etc), listing(setup.legacy)) == (etc, legacy)


def test_convert_difference_reverted_without_an_answer(setup: PolicyDaemon) -> None:
    etc, legacy = changing_world(setup)
    setup.write("30-user.policy", "test.Mine * work vault allow\n")
    etc = listing(setup.etc)
    done = convert(setup, "")
    assert done.returncode == 1
    assert "Conversion reverted." in done.stdout
    assert (listing(setup.etc), listing(setup.legacy)) == (etc, legacy)


def test_convert_difference_kept(setup: PolicyDaemon) -> None:
    changing_world(setup)
    done = convert(setup, "n\n")
    assert done.returncode == 0
    assert done.stdout.endswith("[Y/n] " + SUCCESS)
    assert "test.Svc\t+a\twork\tvault\tallow\n" in (setup.etc / "30-user.policy").read_text()
    assert listing(setup.legacy) == {"test.Svc+a.rpmsave": "work vault allow\n"}
