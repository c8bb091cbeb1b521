"""docs/qrexec-host.md's worked example, run as written: every command in it
works, and does what its comment says."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from .fixtures.processes import SRC, cleanup_dir, program

DOC = Path(__file__).resolve().parents[2] / "docs" / "qrexec-host.md"
UP = "qrexec-host up &"


def example() -> str:
    text = DOC.read_text()
    section = text.split("## A worked example", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_worked_example_runs_as_written() -> None:
    # socket paths must stay short (AF_UNIX): a directory in /tmp, as HostWorld's
    tmp_path = Path(tempfile.mkdtemp(prefix="qd", dir="/tmp"))
    try:
        _run_example(tmp_path)
    finally:
        cleanup_dir(tmp_path)


def _run_example(tmp_path: Path) -> None:
    script = example()
    assert UP in script
    # no terminal here: `up` as the doc says to start it without one
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    answer = tmp_path / "allow"
    answer.write_text("#!/bin/sh\ncat >/dev/null\necho allow:vault\n")
    answer.chmod(0o755)
    script = script.replace(UP, "qrexec-host up --detach "
                            f"--policy-agent-arg=--answer-program={answer}")
    launcher = bin_dir / "qrexec-host"
    launcher.write_text("#!/bin/sh\nexec " + " ".join(program("qrexec-host")) + ' "$@"\n')
    launcher.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QREXEC", "QUBESD", "VCHAN", "DISPLAY", "WAYLAND"))}
    env.update(HOME=str(home), PATH=f"{bin_dir}:{env['PATH']}", PYTHONPATH=SRC,
               QREXEC_HOST_STATE=str(tmp_path / "state"))
    # every failing command is reported with its line; the shell goes on, as a reader would
    traced = "trap 'echo \"FAILED $? at: $BASH_COMMAND\" >&2' ERR\n" + script
    try:
        r = subprocess.run(["bash", "-c", traced], env=env, capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    finally:
        subprocess.run([*program("qrexec-host"), f"--state-dir={tmp_path / 'state'}",
                        "down"], env=env, capture_output=True, timeout=120)
    out, err = r.stdout, r.stderr
    failed = re.findall(r"FAILED (\d+) at: (.*)", err)
    # the one refusal the example shows, and nothing else
    assert failed == [("126", "qrexec-host call work net my.Get")], err
    assert "secret for work\n" in out and "secret for dom0\n" in out, out + err
    assert "qrexec-host: call: refused: no matching rule" in err, err
    assert '"name": "work",\n  "state": "Running"' in out
    assert "tags                  trusted,lan" in out or re.search(r"tags\s+trusted,lan", out)
    assert "Linux" in out  # uname -a in the disposable
    assert "added: lan" in out
    assert re.search(r"agent\.vault: qrexec-agent\[\d+\]: executed", out), out
    assert not (tmp_path / "state" / "qubesd.sock").exists()  # `down` at the end
