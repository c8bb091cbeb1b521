"""qrexec-host: the domain manager of a plain Linux host (docs/reference/cli.md#qrexec-host)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Protocol

from ..host.demo import CALL, write_demo
from ..host.paths import Paths
from ..qubesd.client import QubesdError, call
from ..remote.trust import add_arguments as remote_arguments
from ..remote.trust import run as remote_run
from ..system.environment import Environment
from ..system.parent_death import dies_with_this_process
from ..system.programs import program
from ..tools.install import add_arguments as install_arguments
from ..tools.install import install_command
from . import entry, host_logs
from .host_admin import QCall, reload_command
from .host_logs import logs_command
from .host_run import call_command, run_command
from .host_up import up_command, wait_unlocked

__all__ = ["main", "run", "default_state_dir"]

DESCRIPTION = """\
The layer Xen and qubesd provide on Qubes: domains from a TOML file, each started as its
qrexec-agent in a sandbox (bubblewrap when usable, else plain processes) plus its
qrexec-daemon; dom0's policy daemon and policy agent; the qubesd socket protocol.

`up` runs the manager in the foreground (logging to stderr and to STATE/log/), or in the
background with --detach (returns once everything is up). The other commands talk to the
running manager over its qubesd socket ($QUBESD_SOCKET, default STATE/qubesd.sock):
start/stop = admin.vm.Start/admin.vm.Kill, list and down use pyqrexec.host.* methods.
"""

EPILOG = """\
commands:
  up [--detach] [--sandbox MODE]   start dom0's side and the autostart domains
  down                             stop every domain and the manager
  start NAME / stop NAME           start / kill one domain
  shutdown NAME [--timeout S] [--wait]
                                   SIGTERM to the domain's processes, SIGKILL after S s
  list [--format json] [--fields F,…]
                                   table (name, type, state, domid, label) or JSON
  prefs NAME [KEY [VALUE]]         the properties the policy sees (label, tags, …); with
                                   VALUE: set KEY at once, until `down`
  run [-u USER] NAME -- CMD...     run CMD in NAME through qrexec-client (like qvm-run;
                                   starts NAME; stdin/stdout/exit status passed through)
  run --service NAME SERVICE[+ARG] call SERVICE in NAME as from dom0
  run --dispvm[=TEMPLATE] -- CMD   in a new disposable (default dom0's default_dispvm),
                                   killed afterwards; the template only with `=`
  run --all -- CMD                 in every running domain but dom0; worst exit status
  run --[no-]filter-escape-chars   control characters in the output become _ (default:
                                   when stdout is a terminal); -p/--pass-io is the default
  call SOURCE TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]
                                   run qrexec-client-vm inside SOURCE
  reload                           read the config file again: add, remove, change halted
                                   domains; a running one only in what the policy sees
                                   (label, tags, …); also on SIGHUP to `up`
  logs [NAME] [-f] [--since WHEN]  the manager's, daemons', agents' and policy logs merged
                                   in time order; WHEN: 10m, 2h, 1d, ISO time; --files,
                                   --audit
  install-system [--prefix DIR]    systemd unit (Type=notify), man pages, bash completion
  demo [--yes] [--sandbox MODE]    bring up the embedded default (work, anotherVM halted, a
                                   disposable template; legacy policy file `$anyvm $anyvm ask`),
                                   call work -> anotherVM test.Add 11 22 (prints 33), shut down

defaults: --config $QREXEC_HOST_CONFIG or ./qrexec-host.toml; --state-dir $QREXEC_HOST_STATE,
else /run/qrexec-host for root, else $XDG_RUNTIME_DIR/qrexec-host or /tmp/qrexec-host-UID.
Environment overrides (docs/reference/cli.md#common-environment): QUBESD_SOCKET,
QUBESD_INTERNAL_SOCKET, QREXEC_POLICY_SOCKET, VCHAN_SOCKET_DIR (root of the per-domain vchan
directories), QREXEC_LEGACY_POLICY_DIR (default DOM0_ROOT/etc/qubes-rpc/policy).
`up` holds STATE/lock: one manager per state directory. Ask rules are asked on the terminal
`up` runs on, else in a GTK dialog, else denied (said once at start); see docs/qrexec-host.md.
"""


#: `list` fields: the default table's, and every one there is
TABLE_FIELDS = ("name", "type", "state", "domid", "label")
LIST_FIELDS = (*TABLE_FIELDS, "uuid", "tags", "default_dispvm", "template_for_dispvms",
               "autostart", "disposable")


def default_state_dir() -> Path:
    if os.environ.get("QREXEC_HOST_STATE"):
        return Path(os.environ["QREXEC_HOST_STATE"])
    if os.geteuid() == 0:
        return Path("/run/qrexec-host")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "qrexec-host"
    return Path(f"/tmp/qrexec-host-{os.getuid()}")


def _escape_options(parser: argparse.ArgumentParser, whose: str) -> None:
    esc = parser.add_mutually_exclusive_group()
    esc.add_argument("--filter-escape-chars", dest="filter_esc", action="store_true",
                     default=None, help=f"replace terminal control characters in the {whose} "
                     "output with _ (default when stdout is a terminal)")
    esc.add_argument("--no-filter-escape-chars", dest="filter_esc", action="store_false",
                     help="pass the output as it is (default when stdout is no terminal)")

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qrexec-host", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path,
                        default=Path(os.environ.get("QREXEC_HOST_CONFIG", "qrexec-host.toml")),
                        help="domain definitions (TOML; see docs/qrexec-host.md)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="runtime state: sockets, vchan dirs, logs, disposable roots")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="start dom0's side and the autostart domains")
    up.add_argument("--detach", action="store_true", help="run in the background once up")
    up.add_argument("--sandbox", choices=("auto", "bubblewrap", "plain"), default=None,
                    help="override the config's [host] sandbox (default auto)")
    up.add_argument("--policy-agent-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for qrexec-policy-agent (repeatable)")
    # the demo's own directory: removed by `up` on its way out, however the demo ended
    up.add_argument("--remove-on-exit", type=Path, default=None, help=argparse.SUPPRESS)
    sub.add_parser("down", help="stop every domain and the manager")
    for name in ("start", "stop"):
        sub.add_parser(name, help=f"{name} one domain").add_argument("name")
    ls = sub.add_parser("list", help="the domains: a table, or JSON")
    ls.add_argument("--format", choices=("table", "json"), default="table",
                    help="table (default) or a JSON list of objects")
    ls.add_argument("--fields", default=None, metavar="F1,F2,…",
                    help=f"which fields, in order (default {','.join(TABLE_FIELDS)}; any of "
                    f"{','.join(LIST_FIELDS)})")
    shut = sub.add_parser("shutdown", help="stop a domain gracefully (SIGTERM, then kill)")
    shut.add_argument("name", help="the domain")
    shut.add_argument("--timeout", type=float, default=5.0, metavar="S",
                      help="seconds between SIGTERM and SIGKILL (default 5)")
    shut.add_argument("--wait", action="store_true",
                      help="return once the domain is halted (default: once it is told)")
    prefs = sub.add_parser("prefs", help="show or set the properties the policy sees")
    prefs.add_argument("name", help="the domain")
    prefs.add_argument("key", nargs="?", help="one property (default: all of them)")
    prefs.add_argument("value", nargs="?",
                       help="set KEY to this, at once, until `down` (tags: comma-separated; "
                       "booleans: true/false; an empty value clears default_dispvm, guivm "
                       "or tags)")
    run_p = sub.add_parser("run", help="run a command in a domain (like qvm-run)")
    run_p.add_argument("-u", "--user", default="DEFAULT",
                       help="the user in the domain (default: its default_user)")
    run_p.add_argument("--service", action="store_true",
                       help="CMD is one service NAME[+ARG], called as from dom0")
    where = run_p.add_mutually_exclusive_group()
    where.add_argument("--dispvm", nargs="?", const="", default=None, metavar="TEMPLATE",
                       help="in a new disposable of TEMPLATE (default: dom0's "
                       "default_dispvm), killed afterwards; no NAME then")
    where.add_argument("--all", action="store_true",
                       help="in every running domain but dom0, one after the other; no NAME "
                       "then; exit status the worst one")
    _escape_options(run_p, "command's")
    run_p.add_argument("-p", "--pass-io", action="store_true",
                       help="pass stdin, stdout and the exit status (the default here)")
    run_p.add_argument("words", nargs=argparse.REMAINDER, metavar="NAME -- CMD",
                       help="the domain (not with --dispvm or --all), then the command: one "
                       "word is a shell command line, more are an argv")
    demo = sub.add_parser("demo", help="the embedded default host and its test.Add call")
    demo.add_argument("--yes", action="store_true",
                      help="answer the ask dialog with allow (else: asked on this terminal)")
    demo.add_argument("--sandbox", choices=("auto", "bubblewrap", "plain"), default=None)
    demo.add_argument("--keep", action="store_true", help="keep the demo directory and logs")
    call = sub.add_parser("call", help="run qrexec-client-vm inside SOURCE")
    # what the service sends comes from another domain, to this host's terminal
    _escape_options(call, "call's")
    call.add_argument("source")
    call.add_argument("target")
    call.add_argument("service")
    call.add_argument("args", nargs=argparse.REMAINDER)
    remote_arguments(sub)
    host_logs.add_arguments(sub.add_parser(
        "logs", help="the host's logs merged in time order (-f follows); --audit: the "
        "audit trail"))
    sub.add_parser("reload", help="read the config file again: add, remove or change "
                   "domains without `down`")
    inst = sub.add_parser("install-system", help="install the systemd unit, man pages and "
                          "bash completion")
    install_arguments(inst)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(_bare_dispvm(sys.argv[1:] if argv is None else argv))
    state = (args.state_dir or default_state_dir()).resolve()
    if args.command == "up":
        return up_command(args, state)
    if args.command == "demo":
        return _demo(args)
    if args.command == "logs":
        return logs_command(args, state)
    if args.command == "install-system":
        return install_command(args, parser)
    if args.command == "remote":
        return remote_run(args, state, Environment.current())
    return _client(args, state)


def _bare_dispvm(argv: list[str]) -> list[str]:
    """`run --dispvm CMD`: a bare --dispvm takes no word from the command (its template is
    given only as --dispvm=TEMPLATE), which argparse cannot say by itself."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # qrexec-host's own options
        i += 1 if "=" in argv[i] or argv[i] in ("-h", "--help", "--version") else 2
    if argv[i:i + 1] != ["run"]:
        return argv
    argv = list(argv)
    i += 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        if argv[i] == "--dispvm":
            argv[i] = "--dispvm="
        elif argv[i] in ("-u", "--user"):
            i += 1
        i += 1
    return argv


# -- demo ------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    """`up` the embedded default, make the classic test.Add call, `down`, remove everything."""
    top = Path(tempfile.mkdtemp(prefix="qrexec-demo-"))
    os.chmod(top, 0o755)
    config = write_demo(top)
    state = top / "state"
    me = [*program("qrexec-host"), f"--config={config}", f"--state-dir={state}"]
    if args.yes:
        agent = [f"--policy-agent-arg=--answer-program={top / 'answer-yes'}"]
    elif not os.isatty(0):
        print("qrexec-host demo: no terminal to ask on: the call will be denied "
              "(use --yes to allow it)", file=sys.stderr)
        agent = ["--policy-agent-arg=--frontend=deny"]
    else:
        # the person running the demo answers on this terminal
        agent = ["--policy-agent-arg=--frontend=terminal", "--policy-agent-arg=--tty=/dev/tty"]
    sandbox = [f"--sandbox={args.sandbox}"] if args.sandbox else []
    print(f"qrexec-host demo: domains in {top}; logs in {state / 'log'}", file=sys.stderr)
    # a demo killed outright still takes its host down: `up` stops everything on SIGTERM
    keep = [] if args.keep else [f"--remove-on-exit={top}"]
    up = subprocess.Popen([*me, "up", *sandbox, *agent, *keep],
                          preexec_fn=dies_with_this_process(signal.SIGTERM))
    qubesd = str(state / "qubesd.sock")
    status = 1
    try:
        deadline = time.monotonic() + 120
        while True:
            if up.poll() is not None:
                print("qrexec-host demo: the host did not come up", file=sys.stderr)
                return 1
            try:
                call("pyqrexec.host.List", "dom0", path=qubesd)
                break
            except QubesdError:
                if time.monotonic() > deadline:
                    print("qrexec-host demo: the host did not come up", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        try:  # `up` starts work too; whoever comes second is told it runs
            call("admin.vm.Start", "work", path=qubesd)
        except QubesdError as err:
            if err.exc_type != "QubesVMNotHaltedError":
                print(f"qrexec-host demo: cannot start work: {err}", file=sys.stderr)
                return 1
        print(f"$ qrexec-client-vm {' '.join(CALL[1:])}    # inside work", file=sys.stderr)
        status = subprocess.run([*me, "call", *CALL]).returncode
        decisions = state / "log" / "policy-daemon.log"
        if decisions.exists():
            for line in decisions.read_text(errors="replace").splitlines():
                if "test.Add" in line and ("allowed" in line or "denied" in line):
                    print(f"dom0 policy log: {line}", file=sys.stderr)
    finally:
        # a host already going (Ctrl-C reached it too) has nothing more to say
        subprocess.run([*me, "down"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)
    return status


# -- commands talking to a running manager ---------------------------------------------------
def _unreachable(sock: str, state: Path, err: object) -> str:
    """What to tell someone whose command found no manager: which socket, and what to do."""
    return (f"no qrexec-host is running on {state} (cannot connect to {sock}: {err}); "
            f"start it with `qrexec-host --state-dir={state} up`")


def _qcall(sock: str, state: Path) -> QCall:
    """One qubesd request to the manager on `sock`; no manager there is said plainly."""
    def qcall(method: str, dest: str = "dom0", ok: tuple[str, ...] = (), arg: str = "",
              payload: bytes = b"") -> bytes:
        try:
            return call(method, dest, arg=arg, payload=payload, path=sock)
        except QubesdError as err:
            if err.exc_type in ok:
                return b""
            if not err.exc_type:  # no answer at all: nobody listens there
                cause = err.__cause__ if err.__cause__ is not None else err
                reason = getattr(cause, "strerror", None) or str(cause)
                raise QubesdError(_unreachable(sock, state, reason)) from err
            raise

    return qcall


class Command(Protocol):
    """A command talking to the running manager."""

    def __call__(self, args: argparse.Namespace, state: Path, paths: Paths,
                 qcall: QCall) -> int: ...


def _client(args: argparse.Namespace, state: Path) -> int:
    commands: dict[str, Command] = {
        "down": _down, "start": _start, "stop": _stop, "list": _list, "shutdown": _shutdown,
        "run": lambda args, state, paths, qcall: run_command(args, paths, qcall),
        "prefs": _prefs, "call": call_command, "reload": reload_command,
    }
    paths = Paths.make(state, state, os.environ)  # dom0's root matters only to `up`
    try:
        return commands[args.command](args, state, paths, _qcall(str(paths.qubesd), state))
    except QubesdError as err:
        print(f"qrexec-host: {err}", file=sys.stderr)
        return 1


def _down(args: argparse.Namespace, state: Path, paths: Paths, qcall: QCall) -> int:
    qcall("pyqrexec.host.Shutdown")
    if not wait_unlocked(state, 60):
        print("qrexec-host: down: the manager has not stopped after 60 s", file=sys.stderr)
        return 1
    return 0


def _start(args: argparse.Namespace, state: Path, paths: Paths, qcall: QCall) -> int:
    qcall("admin.vm.Start", args.name)
    return 0


def _stop(args: argparse.Namespace, state: Path, paths: Paths, qcall: QCall) -> int:
    qcall("admin.vm.Kill", args.name)
    return 0


def _shutdown(args: argparse.Namespace, state: Path, paths: Paths, qcall: QCall) -> int:
    qcall("admin.vm.Shutdown", args.name, arg="wait" if args.wait else "",
          payload=str(args.timeout).encode())
    return 0


def _list(args: argparse.Namespace, state: Path, paths: Paths, qcall: QCall) -> int:
    fields = args.fields.split(",") if args.fields else list(TABLE_FIELDS)
    unknown = [f for f in fields if f not in LIST_FIELDS]
    if unknown:
        print(f"qrexec-host: list: unknown field {unknown[0]!r} (one of "
              f"{', '.join(LIST_FIELDS)})", file=sys.stderr)
        return 2
    rows = json.loads(qcall("pyqrexec.host.List"))
    if args.format == "json":
        print(json.dumps([{f: r.get(f) for f in fields} for r in rows], indent=1))
    else:
        _print_table(fields, rows)
    return 0


def _prefs(args: argparse.Namespace, state: Path, paths: Paths, qcall: QCall) -> int:
    if args.value is not None:
        qcall("pyqrexec.host.SetPref", args.name, arg=args.key, payload=args.value.encode())
        return 0
    props = json.loads(qcall("pyqrexec.host.Prefs", args.name))
    if args.key is None:
        _print_table(["property", "value"],
                     [{"property": k, "value": v} for k, v in props.items()], header=False)
    elif args.key in props:
        print(_pref_text(props[args.key]))
    else:
        print(f"qrexec-host: prefs: no such property {args.key!r} (one of "
              f"{', '.join(props)})", file=sys.stderr)
        return 1
    return 0


def _pref_text(value: object) -> str:
    """A property as `prefs NAME KEY VALUE` takes it back."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _print_table(fields: list[str], rows: list[dict[str, object]],
                 header: bool = True) -> None:
    def cell(value: object) -> str:
        return _pref_text(value) or "-"

    table = [[f.upper() for f in fields]] if header else []
    table += [[cell(r.get(f)) for f in fields] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(fields))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
