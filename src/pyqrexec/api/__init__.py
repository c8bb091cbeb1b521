"""A client library for Python programs: qrexec calls without starting a CLI per call
(docs/client-library.md).

dom0 runs commands and services in domains (`Dom0Client`, `AsyncDom0Client`, like
`qrexec-client -d`); a program inside a domain calls services in others (`DomainClient`,
`AsyncDomainClient`, like `qrexec-client-vm`). The bytes on the wire are the CLIs'.

The package is `api` rather than `client`: `pyqrexec.client` holds the low-level pieces the
CLI programs share (the daemon socket, stdio), and this is the public surface above them.
"""

from .calls import AsyncCall
from .dom0 import AsyncDom0Client, service_command
from .domain import AsyncDomainClient
from .errors import (
    CallAborted,
    CallFailed,
    CallRefused,
    CallResult,
    CallTimeout,
    DaemonNotRunning,
    QrexecError,
    SetupFailed,
)
from .sync import Call, Dom0Client, DomainClient, Stream

__all__ = [
    "AsyncCall", "AsyncDom0Client", "AsyncDomainClient", "Call", "CallAborted", "CallFailed",
    "CallRefused", "CallResult", "CallTimeout", "DaemonNotRunning", "Dom0Client",
    "DomainClient", "QrexecError", "SetupFailed", "Stream", "service_command",
]
