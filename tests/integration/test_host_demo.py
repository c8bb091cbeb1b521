"""`qrexec-host demo`: the README's main command brings up the embedded default, makes the
seed's call and leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from .harness import program, wait_for


def _leftovers(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if marker in line]


@pytest.mark.parametrize("sandbox", ["plain", "auto"])
def test_demo_yes_prints_33_and_cleans_up(sandbox: str) -> None:
    r = subprocess.run([*program("qrexec-host"), "demo", "--yes", f"--sandbox={sandbox}"],
                       capture_output=True, timeout=180, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"33\n"
    err = r.stderr.decode()
    assert "work -> anotherVM: allowed to anotherVM" in err
    top = err.split("domains in ", 1)[1].split(";", 1)[0]
    assert _leftovers(top) == []
    assert not os.path.exists(top)


def test_demo_killed_outright_takes_its_host_down(tmp_path: Path) -> None:
    """A demo killed while its call waits for an answer leaves nothing behind."""
    demo = subprocess.Popen([*program("qrexec-host"), "demo", "--yes", "--sandbox=plain"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert demo.stderr is not None
    line = ""
    while "domains in " not in line:
        line = demo.stderr.readline().decode()
        assert line, "the demo ended before naming its directory"
    top = Path(line.split("domains in ", 1)[1].split(";", 1)[0])
    started = tmp_path / "asked"
    try:
        # the answer is slow: the host is up and the call waits while the demo is killed
        slow = top / "answer-slow"
        slow.write_text(f"#!/bin/sh\necho $$ > {started}.new\nmv {started}.new {started}\n"
                        "exec sleep 60\n")
        slow.chmod(0o755)
        slow.rename(top / "answer-yes")
        wait_for(started.exists, 60, "the question")
        assert any(" up " in p for p in _leftovers(str(top)))
        demo.send_signal(signal.SIGKILL)
        demo.wait()
        wait_for(lambda: not _leftovers(str(top)), 30, "the demo's host to go")
    finally:
        demo.stderr.close()
        shutil.rmtree(top, ignore_errors=True)
        if started.exists():  # the slow answer outlives the policy agent that ran it
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(started.read_text()), signal.SIGKILL)
