"""Starting `qubes.WaitForSession` before services that ask for it
(docs/reference/services.md#waiting-for-the-session).

The agent keeps the queue of parked requests (up to `MAX_PARKED`) and the single running waiter;
this module finds and starts the waiter. dom0 runs it synchronously with `run_session_waiter`.
There is no timeout and no guarantee: the waiter's status never decides whether a call runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from .launch import CLOSED, DEVNULL, launch
from .lookup import Entry, ServiceKind, find_entry

__all__ = [
    "WAIT_FOR_SESSION",
    "MAX_PARKED",
    "find_session_waiter",
    "start_session_waiter",
    "run_session_waiter",
]

WAIT_FOR_SESSION = b"qubes.WaitForSession"
#: requests beyond this many proceed without waiting (with a warning)
MAX_PARKED = 256


def find_session_waiter(service_path: Sequence[str]) -> bytes | None:
    """The exact `qubes.WaitForSession` file (no `+` form), when it is an executable."""
    found = find_entry(service_path, [WAIT_FOR_SESSION])
    if isinstance(found, Entry) and found.kind is ServiceKind.EXECUTABLE:
        return found.path
    return None


def _waiter_env(environ: Mapping[bytes, bytes], caller: bytes) -> dict[bytes, bytes]:
    env = dict(environ)
    env[b"QREXEC_REMOTE_DOMAIN"] = caller
    return env


def start_session_waiter(
    service_path: Sequence[str],
    user: str,
    caller: bytes,
    environ: Mapping[bytes, bytes],
) -> int | None:
    """Start the waiter for `user` (after force-user) with `USER\\n` on its stdin; its pid.

    None when there is no waiter or it cannot be started: the parked requests then proceed.
    The caller reaps the pid and releases every parked request when it exits, whatever status.
    """
    path = find_session_waiter(service_path)
    if path is None:
        return None
    read_end, write_end = os.pipe()
    try:
        pid = launch(path, [WAIT_FOR_SESSION], _waiter_env(environ, caller), (read_end, DEVNULL, 2))
    except OSError:
        os.close(write_end)
        return None
    finally:
        os.close(read_end)
    try:
        # one short line always fits the empty pipe's buffer, so this cannot block
        os.write(write_end, os.fsencode(user) + b"\n")
    except OSError:
        pass
    finally:
        os.close(write_end)
    return pid


def run_session_waiter(
    service_path: Sequence[str],
    caller: bytes,
    log: Callable[[str], None],
    environ: Mapping[bytes, bytes],
) -> int | None:
    """dom0: run the waiter to completion with stdin closed; its status (only to be logged)."""
    path = find_session_waiter(service_path)
    if path is None:
        log("qubes.WaitForSession not found")
        return None
    try:
        pid = launch(path, [WAIT_FOR_SESSION], _waiter_env(environ, caller), (CLOSED, DEVNULL, 2))
    except OSError as err:
        log(f"cannot start {os.fsdecode(path)}: {err.strerror}")
        return None
    _, wait_status = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(wait_status)
    status = 128 - status if status < 0 else status
    log(f"qubes.WaitForSession exited with {status}")
    return status
