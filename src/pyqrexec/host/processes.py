"""The processes qrexec-host starts and stops (asyncio): spawning one that dies with the
manager, copying its output through the manager, waiting for what it makes, reading what
bwrap reports, terminating it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

from ..system.parent_death import dies_with_this_process
from ..transport.aio import BackgroundTasks
from .cgroups import DomainCgroup
from .logsink import identifier, open_sink, stamped, stamps_needed

__all__ = ["STOP_TIMEOUT", "BACKGROUND", "spawn", "wait_path", "terminate", "read_info"]

#: how long a process has between SIGTERM and SIGKILL
STOP_TIMEOUT = 5.0

#: the tasks nobody awaits: output copied through the manager, shutdowns not waited for
BACKGROUND = BackgroundTasks()


async def spawn(argv: list[str], env: Mapping[str, str], log: Path,
                new_session: bool = False, pass_fds: tuple[int, ...] = (),
                cgroup: DomainCgroup | None = None,
                echo: Callable[[str], None] | None = None) -> asyncio.subprocess.Process:
    """Start a program that dies with the manager (SIGKILL): a manager killed outright
    cannot stop what it started, and nothing else would. With `cgroup`, the program is in
    it before it runs its first instruction. With `echo`, its output reaches the log
    through the manager, which shows `echo` every line as it comes."""
    dies = dies_with_this_process()

    def preexec() -> None:
        dies()
        if cgroup is not None:
            cgroup.join_in_child()

    with open_sink(log) as out:
        proc = await asyncio.create_subprocess_exec(
            *(cgroup.prefix if cgroup else []), *argv, env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out if echo is None else asyncio.subprocess.PIPE,
            stderr=out if echo is None else asyncio.subprocess.STDOUT,
            start_new_session=new_session, pass_fds=pass_fds, preexec_fn=preexec)
    if echo is not None:
        assert proc.stdout is not None
        BACKGROUND.start(_copy_lines(proc.stdout, log, echo, proc.pid))
    return proc


async def _copy_lines(stream: asyncio.StreamReader, log: Path,
                      echo: Callable[[str], None], pid: int) -> None:
    program = identifier(log).split(".", 1)[0]
    with open_sink(log) as out:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the stream's limit: take it in parts
                line = await stream.read(65536)
            if not line:
                return
            text = line.decode(errors="replace").rstrip("\n")
            # the policy daemon's and agent's lines carry no time: merged views need one
            out.write((stamped(program, text, pid) + "\n").encode() if stamps_needed() else line)
            echo(text)


async def wait_path(path: Path, timeout: float,
                    procs: list[asyncio.subprocess.Process | None],
                    exists: Callable[[Path], bool] = Path.exists) -> bool:
    """True once `path` exists (by `exists`); False on timeout or when one of `procs` ends
    first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not exists(path):
        if loop.time() > deadline or any(p is not None and p.returncode is not None
                                         for p in procs):
            return False
        await asyncio.sleep(0.02)
    return True


async def terminate(proc: asyncio.subprocess.Process, group: bool = False) -> None:
    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.returncode is None:
        send(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            send(signal.SIGKILL)
            await proc.wait()
    if group:  # whatever the agent started and left behind
        send(signal.SIGKILL)


def read_info(fd: int, timeout: float = 20.0) -> dict[str, object]:
    """bwrap's --info-fd JSON (read until it parses: the sandbox may keep the pipe open)."""
    data = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return {}
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        try:
            value = json.loads(data)
        except ValueError:
            continue
        return value if isinstance(value, dict) else {}
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
