"""Start-up tricks are allowed only on the two per-call clients' path, and this is their
guard: a real call by `qrexec-client` and by `qrexec-client-vm` imports only the modules
listed here (docs/architecture.md#code-shape). A module added to their path must be added
here on purpose, with its start-up cost in mind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .fixtures.processes import QrexecHost, program
from .fixtures.world import World

#: what a call may import beyond what `python3 -c pass` already has: our modules ...
OURS = {
    "qrexec-client": {
        "pyqrexec", "pyqrexec.cli", "pyqrexec.cli.args", "pyqrexec.cli.qrexec_client",
        # the launchers' finder of our compiled modules
        "pyqrexec.cli.compiled",
        "pyqrexec.call", "pyqrexec.call.relay", "pyqrexec.client",
        # the client socket's rules alone, not every channel's (`protocol.channel`)
        "pyqrexec.protocol.session", "pyqrexec.transport.feed",
        "pyqrexec.client.daemon_socket", "pyqrexec.protocol",
        "pyqrexec.protocol.constants", "pyqrexec.protocol.data", "pyqrexec.protocol.errors",
        "pyqrexec.protocol.framing", "pyqrexec.protocol.handshake",
        "pyqrexec.protocol.records", "pyqrexec.protocol.wire",
        "pyqrexec.system", "pyqrexec.system.log", "pyqrexec.system.environment",
        "pyqrexec.system.defaults",
        "pyqrexec.transport", "pyqrexec.transport.unixsock", "pyqrexec.transport.vchan",
        "pyqrexec.transport.sockets", "pyqrexec.protocol.sentinels", "pyqrexec.call.traffic",
    },
    "qrexec-client-vm": set(),  # filled below: the same core, its own CLI module
}
OURS["qrexec-client-vm"] = (OURS["qrexec-client"] - {"pyqrexec.cli.qrexec_client",
                                                     "pyqrexec.client",
                                                     "pyqrexec.client.daemon_socket"}
                            | {"pyqrexec.cli.qrexec_client_vm",
                               # the trigger it sends its agent
                               "pyqrexec.protocol.messages"})
#: ... and the standard library's: C modules and `struct`; none of the Python modules that
#: cost milliseconds (`socket` and `signal` build enums at import, `collections` pulls in a
#: handful more): docs/architecture.md#code-shape
STDLIB = {"__future__", "_socket", "select", "struct", "_struct", "errno", "fcntl", "mmap",
          "time", "stat", "_stat", "_signal", "_collections"}
FORBIDDEN = {"dataclasses", "typing", "re", "asyncio", "logging", "inspect", "ast", "socket",
             "signal", "selectors", "enum", "collections", "functools"}
#: the programs run as the installed launchers run them, not with `python -m`, whose own
#: imports would hide ours: the launcher's text itself is the code
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def launched(argv: list[str]) -> list[str]:
    """`argv` of a `python -m pyqrexec.cli.X ...` program, started as its launcher does."""
    m = argv.index("-m")
    script = SCRIPTS / argv[m + 1].rsplit(".", 1)[1].replace("_", "-")
    return [argv[0], "-c", script.read_text(), *argv[m + 2:]]


def imported(stderr: bytes) -> set[str]:
    """The modules `PYTHONPROFILEIMPORTTIME` reported, beyond the interpreter's own start."""
    names = set()
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


def baseline(host: QrexecHost) -> set[str]:
    import subprocess

    r = subprocess.run([sys.executable, "-c", "pass"], capture_output=True,
                       env={"PYTHONPROFILEIMPORTTIME": "1", "PATH": "/usr/bin:/bin"})
    return imported(r.stderr)


def check(name: str, found: set[str], base: set[str]) -> None:
    extra = found - base
    ours = {m for m in extra if m.split(".")[0] == "pyqrexec"}
    assert ours <= OURS[name], f"{name} now imports {sorted(ours - OURS[name])}"
    assert not (extra & FORBIDDEN), f"{name} imports {sorted(extra & FORBIDDEN)}"
    theirs = {m for m in extra - ours if not m.startswith("encodings")}
    assert theirs <= STDLIB, f"{name} now imports {sorted(theirs - STDLIB)}"


def test_qrexec_client_imports_only_its_list(host: QrexecHost, world: World) -> None:
    world.service("anotherVM", "test.True", "#!/bin/sh\n")
    argv = launched([*program("qrexec-client"), f"--socket-dir={host.socket_dir}", "-d",
                     "anotherVM", "DEFAULT:QUBESRPC test.True dom0"])
    r = subprocess.run(argv, capture_output=True, timeout=60,
                       env=host.env(0, PYTHONPROFILEIMPORTTIME="1"))
    assert r.returncode == 0, r.stderr
    check("qrexec-client", imported(r.stderr), baseline(host))


def test_qrexec_client_vm_imports_only_its_list(host: QrexecHost, world: World) -> None:
    world.service("anotherVM", "test.True", "#!/bin/sh\n")
    r = subprocess.run(launched(world.call_argv("work", "anotherVM", "test.True")), input=b"",
                       capture_output=True, timeout=60,
                       env=world.call_env("work", {"PYTHONPROFILEIMPORTTIME": "1"}))
    assert r.returncode == 0, r.stderr
    check("qrexec-client-vm", imported(r.stderr), baseline(host))
