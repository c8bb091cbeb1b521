"""What the client library raises and returns (docs/client-library.md#statuses-and-errors)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "QrexecError", "DaemonNotRunning", "CallRefused", "SetupFailed", "CallTimeout",
    "CallAborted", "CallFailed", "CallResult",
]


class QrexecError(Exception):
    """A call that could not be made or did not end normally.

    `returncode` is the exit status the matching CLI (`qrexec-client`, `qrexec-client-vm`)
    would have ended with, None where no CLI status matches (a timeout, an abort)."""

    returncode: int | None = None

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        if returncode is not None:
            self.returncode = returncode


class DaemonNotRunning(QrexecError):
    """dom0: the domain has no qrexec-daemon listening (`qrexec-client` exits 125)."""

    returncode = 125


class CallRefused(QrexecError):
    """Domain side: the policy (or the target's state) refused the call (exit 126)."""

    returncode = 126


class SetupFailed(QrexecError):
    """The call could not be set up: the daemon or agent failed, the service side never
    connected the data channel in time."""


class CallTimeout(QrexecError, TimeoutError):
    """`run` took longer than its `timeout`; the call was aborted. What had come so far is
    in `stdout` and `stderr`."""

    def __init__(self, message: str, stdout: bytes, stderr: bytes) -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr

    @classmethod
    def after(cls, timeout: float | None, stdout: bytes = b"", stderr: bytes = b"",
              ) -> CallTimeout:
        """A `run` of `timeout` seconds ran out, with this much output so far."""
        return cls(f"the call took more than {timeout} s", stdout, stderr)


class CallAborted(QrexecError):
    """The call was aborted (`abort()`, a cancelled task, a timeout) before it ended."""


@dataclass(frozen=True)
class CallResult:
    """A finished call: the remote status as the CLI reports it, and all of its output."""

    returncode: int
    stdout: bytes
    stderr: bytes

    def check_returncode(self) -> None:
        """Raise CallFailed unless the call's status is 0."""
        if self.returncode != 0:
            raise CallFailed(self)


class CallFailed(QrexecError):
    """`check_returncode()` of a call whose status is not 0."""

    def __init__(self, result: CallResult) -> None:
        super().__init__(f"call ended with status {result.returncode}", result.returncode)
        self.result = result
