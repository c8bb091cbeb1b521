"""Each program's exit statuses (docs/reference/cli.md, after upstream's), which `--help`
ends with and the man pages list. Apart from `cli/__init__.py` because the per-call clients
load that on every call and these tables only for `--help`."""

from __future__ import annotations

from . import INTERRUPTED

__all__ = ["EXIT_STATUS", "NO_OWN_HELP", "exit_table"]

_COMMON = ((INTERRUPTED, "interrupted (Ctrl-C)"),)
_USAGE2 = (2, "usage error")

#: each program's exit statuses (docs/reference/cli.md, after upstream's), shown by --help
EXIT_STATUS: dict[str, tuple[tuple[int | str, str], ...]] = {
    "qrexec-daemon": ((0, "stopped on SIGTERM or its domain's end"),
                      (1, "usage error or start-up failure"),
                      (3, "the agent did not connect in time")),
    "qrexec-client": (("N", "the remote command's or service's exit status (255: none)"),
                      (1, "usage error, cannot connect"),
                      (125, "the daemon is not running, setup failed (or dom0 service error)"),
                      (127, "dom0 service not found")),
    "qrexec-agent": ((0, "stopped"), _USAGE2),
    "qrexec-client-vm": (("N", "the service's status (or the local program's when that one "
                          "is 0)"),
                         (1, "cannot reach the agent, I/O error"), _USAGE2,
                         (126, "request refused"),
                         (255, "data channel closed before an exit code")),
    "qrexec-fork-server": ((0, "stopped"), (1, "error")),
    "qubes-rpc-multiplexer": (("N", "the service's status"), (1, "no such service")),
    "qrexec-policy-daemon": ((0, "stopped"), (1, "cannot listen"), _USAGE2),
    "qrexec-policy-exec": ((0, "allowed"), (1, "denied, or an error"), _USAGE2),
    "qubes-policy-lint": ((0, "no errors"), (1, "errors found"), _USAGE2),
    "qubes-policy": ((0, "done"), (1, "the Admin API refused or failed"), _USAGE2),
    "qubes-policy-admin": ((0, "done"), (1, "refused"), _USAGE2),
    "qubes-policy-editor": ((0, "saved or unchanged"), (1, "error"), _USAGE2),
    "qrexec-policy-graph": ((0, "done"), (1, "error"), _USAGE2),
    "qrexec-legacy-convert": ((0, "converted or nothing to do"), (1, "error or reverted"),
                              _USAGE2),
    "qrexec-policy-agent": ((0, "stopped"), (1, "the front end cannot be used"), _USAGE2),
    "qrexec-policy-agent-autostart": ((0, "done"),),
    "qrexec-audit": ((0, "done (also when --follow is interrupted)"), (1, "cannot read the trail"),
                     _USAGE2),
    "qrexec-policy-register-argument": ((0, "registered"), (1, "refused")),
    "qrexec-host": ((0, "done"), (1, "error (printed on stderr)"), _USAGE2,
                    ("N", "run/call: the command's or service's status"),
                    (126, "call: refused (the reason follows `Request refused`)"),
                    (127, "call: no such service")),
}


#: programs run as services or with plain positional arguments: `--help` alone is theirs
#: to answer here (their own argument parsing would take it for an argument)
NO_OWN_HELP = {
    "qrexec-fork-server": "[SOCKET]",
    "qubes-rpc-multiplexer": "SERVICE-NAME REMOTE-DOMAIN-NAME [TARGET-TYPE TARGET]",
    "qrexec-policy-register-argument": "(a qrexec service: the argument on stdin)",
    "qubes-policy-admin": "(a qrexec service: QREXEC_SERVICE_FULL_NAME names the method)",
    "qrexec-policy-agent-autostart": "",
}


def exit_table(name: str) -> str:
    rows = (*EXIT_STATUS.get(name, ((0, "success"), (1, "error"))), *_COMMON)
    return "exit status:\n" + "".join(f"  {str(code):>4}  {text}\n" for code, text in rows)
