"""`qrexec-host up`: one manager per state directory, its lock, its start in the
foreground or detached, and its reload on SIGHUP (docs/qrexec-host.md)."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..host import config as host_config
from ..host import logsink
from ..host.config import HostConfig
from ..host.manager import Manager
from ..host.notify import notify
from ..host.processes import BACKGROUND
from ..host.sandbox import probe_bwrap
from ..qubesd.server import HostError

__all__ = ["up_command", "lock_state", "wait_unlocked"]

def up_command(args: argparse.Namespace, state: Path) -> int:
    try:
        cfg = host_config.load(args.config)
    except host_config.ConfigError as err:
        print(f"qrexec-host: {err}", file=sys.stderr)
        return 1
    mode = args.sandbox or cfg.sandbox
    bwrap: str | None = None
    why = "sandbox = plain"
    if mode != "plain":
        bwrap, why = probe_bwrap()
        if bwrap is None and mode == "bubblewrap":
            print(f"qrexec-host: {why}", file=sys.stderr)
            return 1
    if bwrap is None:
        print(f"qrexec-host: warning: {why}: domains run as plain processes, NOT isolated "
              "from the host or from each other (docs/isolation.md)", file=sys.stderr)
    state.mkdir(parents=True, exist_ok=True)
    lock = lock_state(state)
    if lock is None:
        return 1
    ready_fd: int | None = None
    if args.detach:
        rfd, wfd = os.pipe()
        if os.fork() != 0:
            os.close(wfd)
            answer = _read_all(rfd)
            if answer == b"1":
                return 0
            why = answer[1:].decode(errors="replace").strip()
            for line in why.splitlines():
                print(f"qrexec-host: {line}", file=sys.stderr)
            print(f"qrexec-host: start failed; see {state / 'log' / 'qrexec-host.log'}",
                  file=sys.stderr)
            return 1
        os.close(rfd)
        ready_fd = wfd
        os.setsid()
        _write_pid(lock)
        (state / "log").mkdir(exist_ok=True)
        fd = os.open(state / "log" / "qrexec-host.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o640)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
    status = _serve(cfg, state, bwrap, args.policy_agent_arg, ready_fd,
                    remove_on_exit=args.remove_on_exit)
    if ready_fd is not None:
        os._exit(status)
    return status


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    return data


def lock_state(state: Path) -> int | None:
    """Hold `STATE/lock` for as long as this `up` lives: two managers on one state directory
    would share its sockets and directories and each stop only part of what they started.
    The descriptor is never inherited (O_CLOEXEC); the lock goes when the process does."""
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        print(f"qrexec-host: {state} is in use by another `qrexec-host up` (pid {holder}); "
              f"stop it first with `qrexec-host --state-dir={state} down`", file=sys.stderr)
        return None
    _write_pid(fd)
    return fd


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def wait_unlocked(state: Path, timeout: float) -> bool:
    """True once no `up` holds `STATE/lock` (it has stopped and cleaned up), or there is
    none; False after `timeout` seconds."""
    try:
        fd = os.open(state / "lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
    finally:
        os.close(fd)


def _serve(cfg: object, state: Path, bwrap: str | None, agent_args: list[str],
           ready_fd: int | None, remove_on_exit: Path | None = None) -> int:
    assert isinstance(cfg, HostConfig)
    # systemd's settings are for this process: no program it starts speaks for it
    notify_env = {"NOTIFY_SOCKET": os.environ.pop("NOTIFY_SOCKET", "")}
    journal = logsink.under_journal(os.environ)
    os.environ.pop("JOURNAL_STREAM", None)
    log_dir = state / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    logsink.use_journal(logsink.journal_socket(os.environ) if journal else None, log_dir)
    if journal:
        say = logsink.HostLog(None)
    elif ready_fd is not None:  # stderr is qrexec-host.log
        say = logsink.HostLog(None, plain=False)
    else:
        say = logsink.HostLog(log_dir / "qrexec-host.log")

    def failed(why: str) -> None:
        say(why)
        if ready_fd is not None:
            os.write(ready_fd, b"0" + why.encode())

    async def amain() -> int:
        manager = Manager(cfg, state, bwrap, os.environ, policy_agent_args=agent_args, log=say,
                          terminal=ready_fd is None and os.isatty(0))
        loop = asyncio.get_running_loop()
        told = []

        def stop() -> None:
            told.append(notify("STOPPING=1", notify_env))
            BACKGROUND.start(manager.shutdown())

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: BACKGROUND.start(
            _reload_on_signal(manager, say, notify_env)))
        try:
            await manager.up()
        except (HostError, OSError) as err:
            failed(str(err.message if isinstance(err, HostError) else err))
            await manager.shutdown()
            return 1
        if manager.stopped.is_set():  # SIGTERM or SIGINT while starting
            return 1
        mode = f"bubblewrap ({bwrap})" if bwrap else "plain processes"
        say(f"up; state {state}; sandbox: {mode}")
        notify(f"READY=1\nSTATUS=up; state {state}; sandbox: {mode}\nMAINPID={os.getpid()}",
               notify_env)
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        await manager.stopped.wait()
        if not told:  # `down` stopped it
            notify("STOPPING=1", notify_env)
        say("down")
        return 0

    try:
        return asyncio.run(amain())
    finally:
        if remove_on_exit is not None:
            shutil.rmtree(remove_on_exit, ignore_errors=True)


async def _reload_on_signal(manager: object, say: Callable[[str], None],
                            notify_env: dict[str, str]) -> None:
    """SIGHUP: `reload` (systemd's ExecReload sends it); what happened is in the log."""
    assert isinstance(manager, Manager)
    notify("RELOADING=1", notify_env)
    try:
        await manager.reload()
    except HostError as err:
        say(f"reload: {err.message}")
    notify("READY=1", notify_env)
