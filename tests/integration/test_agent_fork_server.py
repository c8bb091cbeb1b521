"""The agent hands calls to the user's qrexec-fork-server when there is one
(docs/reference/protocol.md#fork-server-socket)."""

from __future__ import annotations

import subprocess

from .fixtures.processes import QrexecHost, program
from .fixtures.world import World, write_exe


def _start_fork_server(world: World, template: str, shell: str) -> None:
    """A fork server for root in `work`'s session (it sees work's service directory)."""
    path = template.replace("%s", "root")
    env = world.host.env(5, SHELL=shell, QREXEC_SERVICE_PATH=str(world.rpc_dir("work")))
    r = subprocess.run([*program("qrexec-fork-server"), path], env=env, timeout=30)
    assert r.returncode == 0
    # the server detaches: stop it with the rest of the test's processes
    world.host.cleanups.append(lambda: subprocess.run(["pkill", "-f", path], check=False))


def test_calls_go_through_the_fork_server(host: QrexecHost) -> None:
    world = World(host)
    template = str(host.root / "fs.%s.sock")
    shell = write_exe(host.root / "marker-shell",
                      '#!/bin/sh\necho via-fork-server\nexec /bin/sh "$@"\n')
    _start_fork_server(world, template, str(shell))
    dom = world.domain("work", 5, start=False)
    dom.start_agent(fork_server=template)
    dom.start_daemon(extra=[f"--policy-program={world.policy_program}"])
    r = host.client("-d", "work", "root:echo hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"via-fork-server\nhello\n"
    # nogui: never through the fork server
    r = host.client("-d", "work", "root:nogui:echo direct")
    assert r.stdout == b"direct\n"
    world.service("work", "test.Who", "#!/bin/sh\necho \"$QREXEC_REMOTE_DOMAIN\"\nexit 3\n")
    r = host.client("-d", "work", "root:QUBESRPC test.Who dom0")
    assert r.returncode == 3
    assert r.stdout == b"dom0\n"


def test_missing_fork_server_falls_back(host: QrexecHost) -> None:
    world = World(host)
    dom = world.domain("work", 5, start=False)
    dom.start_agent(fork_server=str(host.root / "none.%s.sock"))
    dom.start_daemon(extra=[f"--policy-program={world.policy_program}"])
    r = host.client("-d", "work", "root:echo fallback")
    assert r.stdout == b"fallback\n"
