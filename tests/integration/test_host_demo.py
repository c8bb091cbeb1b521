"""`qrexec-host demo`: the README's main command brings up the embedded default, makes the
seed's call and leaves nothing behind."""

from __future__ import annotations

import subprocess

import pytest

from .harness import program


def _leftovers(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
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
    import os

    assert not os.path.exists(top)
