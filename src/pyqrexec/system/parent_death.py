"""A child process that dies with its parent: Linux's parent-death signal (prctl(2)).

qrexec-host's manager starts every domain's agent and daemon, the policy daemon and the
policy agent. A manager that is killed outright (SIGKILL, the OOM killer) cannot stop them,
and left alone they would go on serving a host that nobody manages any more; with
`PR_SET_PDEATHSIG` the kernel signals each of them as the manager goes.

Two properties of the signal shape the helpers here (prctl(2)):

- it fires when the *thread* that forked the child ends, not the whole process: the manager
  forks from its event-loop thread, which lives exactly as long as the manager;
- it is cleared when the process changes its effective or filesystem user or group ID, and
  by the exec of a set-user-ID program: whatever drops privileges after being started must
  ask for it again (`setpriv --pdeathsig`, or `keep_parent_death_signal` around the change).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["dies_with_this_process", "keep_parent_death_signal", "parent_death_signal",
           "set_parent_death_signal"]

_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2

_prctl: Callable[..., int] | None = None


def _load_prctl() -> Callable[..., int]:
    global _prctl
    if _prctl is None:
        # the process's own symbols: the C library Python runs on, whatever its file name
        fn = ctypes.CDLL(None, use_errno=True).prctl
        fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong]
        fn.restype = ctypes.c_int
        _prctl = fn
    return _prctl


def _call(prctl: Callable[..., int], option: int, arg: int) -> None:
    if prctl(option, arg, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl: {os.strerror(code)}")


def set_parent_death_signal(sig: int, parent: int) -> None:
    """Have the kernel send `sig` to this process when its parent ends. `parent` is the pid
    that parent had: if it has ended already, before the request could take effect (this
    process was re-parented to an init or subreaper), `sig` is taken at once instead."""
    _call(_load_prctl(), _PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def parent_death_signal() -> int:
    """The signal this process gets when its parent ends; 0 = none."""
    value = ctypes.c_int(0)
    _call(_load_prctl(), _PR_GET_PDEATHSIG, ctypes.addressof(value))
    return value.value


@contextmanager
def keep_parent_death_signal() -> Iterator[None]:
    """Around a change of this process's user or group IDs, which clears the parent-death
    signal: the one asked for by whoever started the process is set again afterwards."""
    sig = parent_death_signal()
    parent = os.getppid()
    try:
        yield
    finally:
        if sig:
            set_parent_death_signal(sig, parent)


def dies_with_this_process(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` for `subprocess` / `asyncio.create_subprocess_exec`: the child gets
    `sig` when the calling thread ends (see the module's notes), also when that happens
    between the fork and the request.

    It runs in the forked child of a process that may have other threads, so it does nothing
    that could wait for a lock one of them held at the fork: the C function is looked up
    here, in the parent, and the child only makes system calls."""
    _load_prctl()
    parent = os.getpid()
    return lambda: set_parent_death_signal(sig, parent)
