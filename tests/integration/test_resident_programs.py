"""What the resident programs leave out, one of each per domain
(src/pyqrexec/cli/resident.py): asyncio may load `ssl`, whose libssl and libcrypto cost about
4 MiB resident in each process, and none of them speaks TLS."""

from __future__ import annotations

from pathlib import Path

from .fixtures.processes import Domain
from .fixtures.rawcalls import direct_children


def _libraries(pid: int) -> set[str]:
    return {Path(line.split()[-1]).name for line in Path(f"/proc/{pid}/maps").read_text()
            .splitlines() if ".so" in line}


def test_agent_spawner_and_daemon_load_no_tls(work: Domain) -> None:
    assert work.agent is not None and work.daemon is not None
    spawner = direct_children(work.agent.pid)
    for pid in (work.agent.pid, work.daemon.pid, *spawner):
        tls = {lib for lib in _libraries(pid) if "ssl" in lib or "crypto" in lib}
        assert not tls, (pid, tls)
