"""Both ends of the ssh connection run their program as a child and watch one of their own
file descriptors: when the peer on it is gone (POLLHUP, POLLERR), the call is over for
whoever was listening, and a program that would otherwise wait for a service that may
never end (one writing for ever into a connection nobody reads) is stopped."""

from __future__ import annotations

import os
import select
import subprocess

__all__ = ["watch", "GONE"]

#: the status when the call ended because the peer went away
GONE = 1


def watch(proc: subprocess.Popen[bytes], fd: int) -> int:
    """`proc`'s exit status (128 + N for signal N), or GONE after terminating it when
    `fd`'s peer has gone."""
    pidfd = os.pidfd_open(proc.pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(fd, 0)  # POLLHUP, POLLERR and POLLNVAL are reported anyway
    try:
        while proc.poll() is None:
            for ready, _ in poller.poll():
                if ready == fd and proc.poll() is None:
                    proc.terminate()
                    proc.wait()
                    return GONE
    finally:
        os.close(pidfd)
    status = proc.returncode
    return status if status >= 0 else 128 - status
