"""qrexec-host: the domain manager of a plain Linux host (docs/reference/cli.md#qrexec-host)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..host.manager import Paths

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


class QCall(Protocol):
    """One qubesd request from a client command; errors in `ok` answer b""."""

    def __call__(self, method: str, dest: str = "dom0", ok: tuple[str, ...] = (),
                 arg: str = "", payload: bytes = b"") -> bytes: ...


def default_state_dir() -> Path:
    if os.environ.get("QREXEC_HOST_STATE"):
        return Path(os.environ["QREXEC_HOST_STATE"])
    if os.geteuid() == 0:
        return Path("/run/qrexec-host")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "qrexec-host"
    return Path(f"/tmp/qrexec-host-{os.getuid()}")


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
    esc = run_p.add_mutually_exclusive_group()
    esc.add_argument("--filter-escape-chars", dest="filter_esc", action="store_true",
                     default=None, help="replace terminal control characters in the "
                     "command's output with _ (default when stdout is a terminal)")
    esc.add_argument("--no-filter-escape-chars", dest="filter_esc", action="store_false",
                     help="pass the output as it is (default when stdout is no terminal)")
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
    call.add_argument("source")
    call.add_argument("target")
    call.add_argument("service")
    call.add_argument("args", nargs=argparse.REMAINDER)
    logs = sub.add_parser("logs", help="list the host's log files; --audit: the audit trail")
    logs.add_argument("--audit", action="store_true",
                      help="show the policy daemon's audit trail (options of qrexec-audit)")
    from .qrexec_audit import add_arguments as audit_arguments

    audit_arguments(logs, file=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_bare_dispvm(sys.argv[1:] if argv is None else argv))
    state = (args.state_dir or default_state_dir()).resolve()
    if args.command == "up":
        return _up(args, state)
    if args.command == "demo":
        return _demo(args)
    if args.command == "logs":
        return _logs(args, state)
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


def _logs(args: argparse.Namespace, state: Path) -> int:
    """`logs`: the host's log files; `logs --audit`: its audit trail, as qrexec-audit shows it."""
    from ..policy.audit import AUDIT_FILE
    from .qrexec_audit import show

    log_dir = state / "log"
    if args.audit:
        return show(str(log_dir / AUDIT_FILE), args, sys.stdout)
    if not log_dir.is_dir():
        print(f"qrexec-host: no logs in {log_dir}", file=sys.stderr)
        return 1
    for path in sorted(log_dir.iterdir()):
        print(path)
    return 0


# -- up ------------------------------------------------------------------------------------
def _up(args: argparse.Namespace, state: Path) -> int:
    from ..host import config as host_config
    from ..host.sandbox import probe_bwrap

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
    import fcntl

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
    import fcntl
    import time

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
    import asyncio
    import signal

    from ..host.config import HostConfig
    from ..host.manager import Manager
    from ..host.qubesd_server import HostError

    assert isinstance(cfg, HostConfig)

    def failed(why: str) -> None:
        print(f"qrexec-host: {why}", file=sys.stderr, flush=True)
        if ready_fd is not None:
            os.write(ready_fd, b"0" + why.encode())

    async def amain() -> int:
        manager = Manager(cfg, state, bwrap, policy_agent_args=agent_args,
                          terminal=ready_fd is None and os.isatty(0))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(manager.shutdown()))
        try:
            await manager.up()
        except (HostError, OSError) as err:
            failed(str(err.message if isinstance(err, HostError) else err))
            await manager.shutdown()
            return 1
        if manager.stopped.is_set():  # SIGTERM or SIGINT while starting
            return 1
        mode = f"bubblewrap ({bwrap})" if bwrap else "plain processes"
        print(f"qrexec-host: up; state {state}; sandbox: {mode}", file=sys.stderr, flush=True)
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        await manager.stopped.wait()
        print("qrexec-host: down", file=sys.stderr, flush=True)
        return 0

    try:
        return asyncio.run(amain())
    finally:
        if remove_on_exit is not None:
            import shutil

            shutil.rmtree(remove_on_exit, ignore_errors=True)


# -- demo ------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    """`up` the embedded default, make the seed's call, `down`, remove everything."""
    import shutil
    import signal
    import subprocess
    import tempfile
    import time

    from ..host.demo import CALL, write_demo
    from ..host.manager import program
    from ..host.qubesd import QubesdError, call
    from ..parent_death import dies_with_this_process

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


def _client(args: argparse.Namespace, state: Path) -> int:
    import json

    from ..host.manager import Paths
    from ..host.qubesd import QubesdError, call

    paths = Paths.make(state, state, os.environ)  # dom0's root matters only to `up`
    sock = str(paths.qubesd)

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

    try:
        if args.command == "down":
            qcall("pyqrexec.host.Shutdown")
            if not wait_unlocked(state, 60):
                print("qrexec-host: down: the manager has not stopped after 60 s",
                      file=sys.stderr)
                return 1
            return 0
        if args.command == "start":
            qcall("admin.vm.Start", args.name)
            return 0
        if args.command == "stop":
            qcall("admin.vm.Kill", args.name)
            return 0
        if args.command == "list":
            fields = args.fields.split(",") if args.fields else list(TABLE_FIELDS)
            unknown = [f for f in fields if f not in LIST_FIELDS]
            if unknown:
                print(f"qrexec-host: list: unknown field {unknown[0]!r} (one of "
                      f"{', '.join(LIST_FIELDS)})", file=sys.stderr)
                return 2
            rows = json.loads(qcall("pyqrexec.host.List"))
            if args.format == "json":
                print(json.dumps([{f: r.get(f) for f in fields} for r in rows], indent=1))
                return 0
            _print_table(fields, rows)
            return 0
        if args.command == "shutdown":
            qcall("admin.vm.Shutdown", args.name, arg="wait" if args.wait else "",
                  payload=str(args.timeout).encode())
            return 0
        if args.command == "run":
            return _run(args, paths, qcall)
        if args.command == "prefs":
            if args.value is not None:
                qcall("pyqrexec.host.SetPref", args.name, arg=args.key,
                      payload=args.value.encode())
                return 0
            props = json.loads(qcall("pyqrexec.host.Prefs", args.name))
            if args.key is None:
                _print_table(["property", "value"],
                             [{"property": k, "value": v} for k, v in props.items()],
                             header=False)
            elif args.key in props:
                print(_pref_text(props[args.key]))
            else:
                print(f"qrexec-host: prefs: no such property {args.key!r} (one of "
                      f"{', '.join(props)})", file=sys.stderr)
                return 1
            return 0
        if args.command == "call":
            qcall("admin.vm.Start", args.source, ok=("QubesVMNotHaltedError",))
            spec = json.loads(qcall("pyqrexec.host.Exec", args.source))
            return _call(args, spec, paths.log_dir)
    except QubesdError as err:
        print(f"qrexec-host: {err}", file=sys.stderr)
        return 1
    return 2


def _run(args: argparse.Namespace, paths: Paths, qcall: QCall) -> int:
    """`run`: in one domain, a new disposable, or every running domain; the command's
    streams and exit status passed through."""
    import json
    import shlex

    words = list(args.words)
    name = None
    if args.dispvm is None and not args.all:
        if not words or words[0] == "--":
            print("qrexec-host: run: no domain given", file=sys.stderr)
            return 2
        name = words.pop(0)
    cmd = words[1:] if words[:1] == ["--"] else words
    if not cmd:
        print("qrexec-host: run: no command given", file=sys.stderr)
        return 2
    if args.service:
        if len(cmd) != 1 or not cmd[0] or any(c.isspace() for c in cmd[0]):
            print("qrexec-host: run: --service takes one word, NAME[+ARG]", file=sys.stderr)
            return 2
        line = f"QUBESRPC {cmd[0]} dom0"
    else:
        line = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
    filter_esc = args.filter_esc
    if filter_esc is None:
        filter_esc = os.isatty(sys.stdout.fileno())
    if name == "dom0":
        if args.service:
            print("qrexec-host: run: --service in dom0: use qrexec-client", file=sys.stderr)
            return 2
        return _run_in_dom0(json.loads(qcall("pyqrexec.host.Exec", "dom0")),
                            args.user, cmd, filter_esc)
    if name is not None:
        return _run_in(name, args.user, line, filter_esc, paths, qcall)
    if args.all:
        names = [r["name"] for r in json.loads(qcall("pyqrexec.host.List"))
                 if r["state"] == "Running" and r["name"] != "dom0"]
        worst = 0
        for each in names:
            worst = max(worst, _run_in(each, args.user, line, filter_esc, paths, qcall))
        return worst
    disp = qcall("admin.vm.CreateDisposable", args.dispvm or "dom0").decode()
    try:
        return _run_in(disp, args.user, line, filter_esc, paths, qcall)
    finally:
        qcall("admin.vm.Kill", disp, ok=("QubesVMNotStartedError",))


def _run_in(name: str, user: str, line: str, filter_esc: bool, paths: Paths,
            qcall: QCall) -> int:
    """qrexec-client -d NAME USER:LINE, NAME started first; Ctrl-C reaches the client (same
    process group), which ends the command."""
    import signal
    import subprocess

    from ..host.manager import program

    qcall("admin.vm.Start", name, ok=("QubesVMNotHaltedError",))
    argv = [*program("qrexec-client"), f"--socket-dir={paths.socket_dir}", "-d", name,
            *(["-t", "-T"] if filter_esc else []), f"{user}:{line}"]
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        status = subprocess.call(argv, env=paths.client_env(os.environ))
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - status if status < 0 else status


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


def _call(args: argparse.Namespace, spec: dict[str, object], log_dir: Path) -> int:
    """qrexec-client-vm inside SOURCE, waited for here on the host: when the call is
    refused or finds no service, the person at this terminal is told why (the domain's
    program itself gets exactly what it gets on Qubes)."""
    import shutil
    import signal
    import subprocess

    from ..host.limits import join
    from ..host.manager import program

    if "agent_socket" not in spec:
        print(f"qrexec-host: call: {args.source} has no qrexec-agent; in dom0 use "
              "`run dom0 -- qrexec-client …`", file=sys.stderr)
        return 2
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    root = spec.get("root")
    if isinstance(root, str) and rest and rest[0].startswith("/"):
        # plain mode shares the host's filesystem: a program named by its path in
        # the domain is found in the domain's root first
        inside = os.path.join(root, rest[0].lstrip("/"))
        if os.path.exists(inside):
            rest = [inside, *rest[1:]]
    prefix = spec["prefix"]
    env = spec["env"]
    cgroup = spec.get("cgroup", [])
    assert isinstance(prefix, list) and isinstance(env, dict) and isinstance(cgroup, list)
    argv = [*prefix, *program("qrexec-client-vm"), f"--agent-socket={spec['agent_socket']}",
            "--", args.target, args.service, *rest]
    exe = shutil.which(argv[0]) or argv[0]
    marks = _log_marks(log_dir)

    def enter() -> None:
        join(cgroup)  # the program is the domain's: bounded by its limits

    # Ctrl-C reaches the program (same process group); this side only reports
    signal.signal(signal.SIGINT, lambda *_: None)
    try:
        proc = subprocess.Popen([exe, *argv[1:]], env=env, preexec_fn=enter)
    except (OSError, subprocess.SubprocessError) as err:
        print(f"qrexec-host: call: cannot run {argv[0]} in {args.source}: {err}",
              file=sys.stderr)
        return 1
    status = proc.wait()
    if status < 0:
        return 128 - status
    if status == 126:
        why = _when_logged(lambda: _refusal(log_dir, marks, args))
        if why:
            print(f"qrexec-host: call: {why}", file=sys.stderr)
    elif status == 127:
        missing = _when_logged(lambda: _missing_service(log_dir, marks, args.service))
        if missing:
            print(f"qrexec-host: call: {missing}", file=sys.stderr)
    return status


def _log_marks(log_dir: Path) -> dict[Path, int]:
    """How long the policy daemon's and the agents' logs are before a call."""
    marks: dict[Path, int] = {}
    for log in [log_dir / "policy-daemon.log", *log_dir.glob("agent.*.log")]:
        try:
            marks[log] = log.stat().st_size
        except OSError:
            continue
    return marks


def _new_lines(log: Path, marks: dict[Path, int]) -> list[str]:
    try:
        with open(log, "rb") as f:
            f.seek(marks.get(log, 0))
            return f.read(1 << 20).decode(errors="replace").splitlines()
    except OSError:
        return []


def _when_logged(read: Callable[[], str], patience: float = 1.0) -> str:
    """`read()` again until it finds its line, for `patience` seconds at most: the logs are
    written by `qrexec-host up`, which relays what the programs print, so a line printed
    before the call ended may reach the file a moment after the caller has its answer."""
    import time

    deadline = time.monotonic() + patience
    while not (found := read()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def _refusal(log_dir: Path, marks: dict[Path, int], args: argparse.Namespace) -> str:
    """The policy daemon's reason for refusing this call, from what it logged meanwhile."""
    service = args.service.split("+", 1)[0]
    found = ""
    for line in _new_lines(log_dir / "policy-daemon.log", marks):
        if line.startswith("error loading policy: "):
            found = f"policy failed to load: {line[len('error loading policy: '):]}"
        head = f"qrexec: {service}"
        if line.startswith(head) and f": {args.source} -> " in line:
            reason = line.split(" -> ", 1)[1].split(": ", 1)[-1]
            for prefix, text in (("error loading policy: ", "policy failed to load: "),
                                 ("denied: ", "refused: ")):
                if reason.startswith(prefix):
                    found = text + reason[len(prefix):]
    return found


def _missing_service(log_dir: Path, marks: dict[Path, int], service: str) -> str:
    """"no such service …" when a target's agent logged that it has none."""
    for log in sorted(log_dir.glob("agent.*.log")):
        for line in _new_lines(log, marks):
            if "Service not found: " in line and service.split("+", 1)[0] in line:
                return f"no such service {service} in {log.name[6:-4]}"
    return ""


def _run_in_dom0(spec: dict[str, object], user: str, cmd: list[str], filter_esc: bool) -> int:
    """`run dom0`: dom0 is this host, so the command runs here, with dom0's environment; as
    for a domain, one word is a shell command line and more are an argv."""
    import shutil

    from ..host.sandbox import user_wrapper

    env = spec["env"]
    assert isinstance(env, dict)
    argv = ["/bin/sh", "-c", cmd[0]] if len(cmd) == 1 else cmd
    argv = [*user_wrapper(None if user == "DEFAULT" else user), *argv]
    exe = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
    if filter_esc:
        return _filtered(exe, argv, env)
    try:
        os.execve(exe, argv, env)
    except OSError as err:
        print(f"qrexec-host: run: {argv[0]}: {err.strerror}", file=sys.stderr)
    return 127


def _filtered(exe: str, argv: list[str], env: dict[str, str]) -> int:
    """The program with its stdout and stderr filtered as qrexec-client -t -T filters a
    domain's (dom0's own commands do not pass through qrexec-client)."""
    import selectors
    import signal
    import subprocess

    from ..relay import unsafe_filter

    signal.signal(signal.SIGINT, lambda *_: None)  # the program gets it and ends
    try:
        proc = subprocess.Popen([exe, *argv[1:]], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError as err:
        print(f"qrexec-host: run: {argv[0]}: {err.strerror}", file=sys.stderr)
        return 127
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, sys.stdout.fileno())
    sel.register(proc.stderr, selectors.EVENT_READ, sys.stderr.fileno())
    while sel.get_map():
        for key, _ in sel.select():
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
                continue
            out = unsafe_filter(data)
            while out:
                out = out[os.write(key.data, out):]
    status = proc.wait()
    return 128 - status if status < 0 else status


def run() -> None:
    from . import entry

    entry(main)


if __name__ == "__main__":
    run()
