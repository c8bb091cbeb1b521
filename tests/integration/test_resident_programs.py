"""What the resident programs leave out, one of each per domain
(src/pyqrexec/cli/resident.py): asyncio may load `ssl`, whose libssl and libcrypto cost about
4 MiB resident in each process, and none of them speaks TLS; nor do they load `dataclasses`."""

from __future__ import annotations

import subprocess
import sys
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


def _loaded(imports: str, names: tuple[str, ...]) -> list[str]:
    """Which of `names` are in `sys.modules` after a fresh interpreter ran `imports` (the
    resident programs' modules, as at their start)."""
    code = (f"import sys, asyncio\n{imports}\n"
            f"print(','.join(m for m in {names!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    return out.split(",") if out else []


def test_agent_and_daemon_load_no_dataclasses() -> None:
    """`dataclasses` and the methods it generates with `exec` cost about 0.4 MiB in each
    process (14 classes measured); the resident programs use `protocol.records` and slotted
    classes instead (issue 12, goal 4)."""
    imports = ("import pyqrexec.cli.qrexec_agent, pyqrexec.agent.agent\n"
               "import pyqrexec.cli.qrexec_daemon, pyqrexec.daemon.daemon, pyqrexec.daemon.worker\n"
               "import pyqrexec.daemon.call_audit, pyqrexec.call.service_side")
    assert _loaded(imports, ("dataclasses", "copy")) == []


def test_the_agent_leaves_the_relay_to_its_call_processes() -> None:
    """The relay and the service side (~0.3 MiB with `mmap`) are loaded by the call spawner
    for its workers (`call.domain_handler.load_call_modules`), not by the agent, which only
    hands calls over (docs/architecture.md#the-call-spawner)."""
    imports = "import pyqrexec.cli.qrexec_agent, pyqrexec.agent.agent"
    assert _loaded(imports, ("pyqrexec.call.relay", "pyqrexec.call.service_side", "mmap")) == []


def test_the_daemon_leaves_json_to_the_audit_trail_writers() -> None:
    """qrexec-daemon loads `policy.audit` for the end-of-call report and its names only;
    `json` (150 KiB resident in each daemon) is imported where a record is written or read,
    which the daemon never does (issue 12, goal 4)."""
    imports = ("import pyqrexec.cli.qrexec_daemon, pyqrexec.daemon.daemon, pyqrexec.daemon.worker\n"
               "import pyqrexec.daemon.call_audit")
    assert _loaded(imports, ("json", "json.encoder")) == []
