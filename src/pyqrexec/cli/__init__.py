"""One module per program; `entry` is how each one's console script runs it."""

from __future__ import annotations

import sys

#: on the clients' start-up path: `collections.abc` at run time would load `collections`
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["entry", "start_up_over", "INTERRUPTED", "program_name", "client_log"]

#: exit status after Ctrl-C, as a shell reports a command ended by SIGINT
INTERRUPTED = 130

def program_name(main: Callable[..., int]) -> str:
    """`pyqrexec.cli.qubes_policy_lint` -> `qubes-policy-lint`."""
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    module = (spec.name if spec is not None else main.__module__).rsplit(".", 1)[-1]
    if module == "policy_register_argument":
        return "qrexec-policy-register-argument"
    return module.replace("_", "-")


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
    if asks_help:
        from .exit_status import NO_OWN_HELP, exit_table  # lazy: only for --help

        if name in NO_OWN_HELP and len(args) == 1:
            module = sys.modules.get(main.__module__)
            print(f"usage: {name} {NO_OWN_HELP[name]}\n\n{(module.__doc__ or '').strip()}\n")
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
