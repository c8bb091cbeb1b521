"""`qrexec-host demo`: the README's main command brings up the embedded default, makes the
classic test.Add call and leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from .fixtures.processes import process_gone, program, wait_for


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


def _demo_dir(err: Path) -> Path | None:
    text = err.read_text(errors="replace")
    if "domains in " not in text:
        return None
    return Path(text.split("domains in ", 1)[1].split(";", 1)[0])


def _story(err: Path, top: Path | None) -> str:
    """What the demo and its host said, for a failure message."""
    parts = [f"demo stderr:\n{err.read_text(errors='replace')}"]
    logs = top / "state" / "log" if top else None
    if logs and logs.is_dir():
        for log in sorted(logs.iterdir()):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"{log.name}:\n" + "\n".join(lines))
    return "\n".join(parts)


def test_demo_killed_outright_takes_its_host_down(tmp_path: Path) -> None:
    """A demo killed while its call waits for an answer leaves nothing behind."""
    # stderr to a file: the host logs there too, and a pipe nobody reads could stall it
    err = tmp_path / "demo.err"
    with open(err, "wb") as out:
        demo = subprocess.Popen([*program("qrexec-host"), "demo", "--yes", "--sandbox=plain"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=out)
    top: Path | None = None
    started = tmp_path / "asked"
    try:
        wait_for(lambda: _demo_dir(err) is not None or demo.poll() is not None, 60,
                 "the demo to name its directory")
        top = _demo_dir(err)
        assert top is not None, _story(err, None)
        # the answer is slow: the host is up and the call waits while the demo is killed
        slow = top / "answer-slow"
        slow.write_text(f"#!/bin/sh\necho $$ > {started}.new\nmv {started}.new {started}\n"
                        "exec sleep 60\n")
        slow.chmod(0o755)
        slow.rename(top / "answer-yes")
        wait_for(lambda: started.exists() or demo.poll() is not None, 90, "the question")
        assert started.exists(), _story(err, top)
        assert any(" up " in p for p in _leftovers(str(top)))
        demo.send_signal(signal.SIGKILL)
        demo.wait()
        wait_for(lambda: not _leftovers(str(top)), 30, "the demo's host to go")
        # and its directory with it: nobody else would remove it
        wait_for(lambda: not top.exists(), 30, "the demo's directory to go")
        # the answer program goes with the policy agent that ran it
        wait_for(lambda: process_gone(int(started.read_text())), 30, "the answer program to go")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if top is not None:
            shutil.rmtree(top, ignore_errors=True)
        if started.exists():  # a failed test may leave the slow answer behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(started.read_text()), signal.SIGKILL)
