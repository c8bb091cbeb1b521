"""One module per program; `entry` is how each one's console script runs it."""

from __future__ import annotations

import sys

#: on the clients' start-up path: `collections.abc` at run time would load `collections`
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["entry", "start_up_over", "INTERRUPTED", "EXIT_STATUS", "program_name", "exit_table",
           "client_log"]

#: exit status after Ctrl-C, as a shell reports a command ended by SIGINT
INTERRUPTED = 130

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
_NO_OWN_HELP = {
    "qrexec-fork-server": "[SOCKET]",
    "qubes-rpc-multiplexer": "SERVICE-NAME REMOTE-DOMAIN-NAME [TARGET-TYPE TARGET]",
    "qrexec-policy-register-argument": "(a qrexec service: the argument on stdin)",
    "qubes-policy-admin": "(a qrexec service: QREXEC_SERVICE_FULL_NAME names the method)",
    "qrexec-policy-agent-autostart": "",
}


def program_name(main: Callable[..., int]) -> str:
    """`pyqrexec.cli.qubes_policy_lint` -> `qubes-policy-lint`."""
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    module = (spec.name if spec is not None else main.__module__).rsplit(".", 1)[-1]
    if module == "policy_register_argument":
        return "qrexec-policy-register-argument"
    return module.replace("_", "-")


def exit_table(name: str) -> str:
    rows = (*EXIT_STATUS.get(name, ((0, "success"), (1, "error"))), *_COMMON)
    return "exit status:\n" + "".join(f"  {str(code):>4}  {text}\n" for code, text in rows)


def client_log(program: str) -> Callable[[str], None]:
    """A per-call client's `log(message)`: `system.log.Logger`, loaded at the first message.
    A call that goes well logs nothing, and the module is ~0.1 ms of the client's start."""

    def log(message: str) -> None:
        from ..system.log import Logger

        Logger(program)(message)

    return log


def start_up_over() -> None:
    """Called by the per-call clients once their call is set up, just before the relay.

    Their launchers (scripts/, host/launchers.py) hold the cyclic garbage collector while the
    client starts: what start-up makes — modules, classes, functions — lives until exit, and
    each collection would scan it all again (three or four of them, ~0.15 ms of a call). Here
    those objects are set aside for good (`gc.freeze`) and collection resumes for what the
    relay allocates, so a long call cannot pile up cycles. Nothing to do when the collector
    runs already (a client started some other way)."""
    import gc

    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def entry(main: Callable[[], int], *, quick_exit: bool = False) -> None:
    """Run `main` and exit with its status. `--version` alone prints the version; `--help`
    ends with the exit-status table; Ctrl-C ends the program with 130 and no traceback (the
    person pressing it asked for exactly that), a closed output pipe quietly.

    `quick_exit`: once main has returned and the standard streams are flushed, end at once,
    without the interpreter's tear-down of every module (~1-2 ms, the per-call programs have
    nothing else to finish)."""
    name = program_name(main)
    args = sys.argv[1:]
    if args == ["--version"]:
        from .. import __version__

        print(f"{name} (pyqrexec) {__version__}")
        sys.exit(0)
    asks_help = args[:1] in (["-h"], ["--help"])
    if asks_help and name in _NO_OWN_HELP and len(args) == 1:
        module = sys.modules.get(main.__module__)
        print(f"usage: {name} {_NO_OWN_HELP[name]}\n\n{(module.__doc__ or '').strip()}\n")
        print(exit_table(name), end="")
        sys.exit(0)
    try:
        status = main()
        if asks_help:  # whatever status upstream gives its help (qrexec-daemon: 1)
            print("\n" + exit_table(name), end="")
    except KeyboardInterrupt:
        status = INTERRUPTED
    except BrokenPipeError:
        status = 1
    except SystemExit:
        if asks_help:
            print("\n" + exit_table(name), end="")
        raise
    flushed = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            flushed = False
    # what could not be flushed is the tear-down's to report, as without quick_exit
    if quick_exit and flushed:
        import os

        os._exit(status & 0xFF)
    sys.exit(status)
