"""docs/architecture.md's "Running one call by hand", run as written: the shell blocks of that
section, in order, must print what the section says they print."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"


def section_blocks() -> tuple[list[str], str]:
    """The section's `sh` blocks and the text of the block that shows the calls' output."""
    text = DOC.read_text()
    start = text.index("## Running one call by hand")
    end = text.index("### Variations", start)
    section = text[start:end]
    shell = re.findall(r"```sh\n(.*?)```", section, re.S)
    shown = re.search(r"prints\n\n```\n(.*?)```", section, re.S)
    assert shell and shown
    return shell, shown.group(1)


def test_the_walk_through_runs_as_written(tmp_path: Path) -> None:
    blocks, expected = section_blocks()
    # everything up to the clean-up, then a marker, then the clean-up itself
    script = "set -u\nREPO_ROOT=" + str(ROOT) + "\ncd $REPO_ROOT\n"
    # the wrappers go to this test's own directory rather than the shared /tmp/qrexec-bin
    script += "\n".join(blocks[:-1]).replace("REPO=$PWD", "REPO=$REPO_ROOT").replace(
        "/tmp/qrexec-bin", str(tmp_path / "bin"))
    script += ("\necho ===policy===; cat $Q/policy.log\n"
               "echo ===agent===; cat $Q/agent.anotherVM.log\n")
    script += blocks[-1]
    # the reader sees stdout and stderr together, as the section shows them
    result = subprocess.run(["bash", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=120, cwd=tmp_path)
    out = result.stdout
    assert "hello from domain 1 as root" in out, out
    calls = out.split("hello from domain 1 as root\n", 1)[1].split("===policy===")[0]
    assert calls == expected, out
    policy = out.split("===policy===")[1].split("===agent===")[0]
    assert "qrexec: test.Add+: work -> anotherVM: allowed to anotherVM" in policy
    assert "qrexec: test.Other: work -> anotherVM: denied: no matching rule found" in policy
    assert "executed: root:QUBESRPC test.Add+ work (pid" in out.split("===agent===")[1]
