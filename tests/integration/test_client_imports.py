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
        "pyqrexec.compiled",
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
STDLIB = {"__future__", "gc", "_socket", "select", "struct", "_struct", "errno", "fcntl", "mmap",
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


#: run before a launcher's text: reports, at the client's exit, whether the collector runs,
#: how many objects were set aside, and the set-aside count at each collection
_GC_PROBE = """\
import gc, os
_seen = []
gc.callbacks.append(lambda phase, info: phase == "start" and _seen.append(gc.get_freeze_count()))
_exit = os._exit
def _report(status):
    os.write(2, f"gc-probe {gc.isenabled()} {gc.get_freeze_count()} {_seen}\\n".encode())
    _exit(status)
os._exit = _report
"""


def gc_report(stderr: bytes) -> tuple[bool, int, list[int]]:
    line = next(x for x in stderr.decode().splitlines() if x.startswith("gc-probe "))
    enabled, frozen, seen = line.split(" ", 3)[1:]
    return enabled == "True", int(frozen), eval(seen)


def test_clients_collect_garbage_only_once_the_call_is_set_up(host: QrexecHost,
                                                               world: World) -> None:
    """The launchers hold the collector while the client starts; the relay runs with it, the
    start-up's objects set aside (pyqrexec.cli.start_up_over)."""
    world.service("anotherVM", "test.Many", "#!/bin/sh\nhead -c 3000000 /dev/zero\n")
    client = launched([*program("qrexec-client"), f"--socket-dir={host.socket_dir}", "-d",
                       "anotherVM", "DEFAULT:QUBESRPC test.Many dom0"])
    client_vm = launched(world.call_argv("work", "anotherVM", "test.Many"))
    for argv, env in ((client, host.env(0)), (client_vm, world.call_env("work", {}))):
        argv[2] = _GC_PROBE + argv[2]
        r = subprocess.run(argv, input=b"", capture_output=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        assert len(r.stdout) == 3000000
        enabled, frozen, seen = gc_report(r.stderr)
        assert enabled
        assert frozen > 1000  # the modules' functions, classes, ...
        # no collection before start-up was over; after it, only the young objects are seen
        assert all(n == frozen for n in seen), seen
