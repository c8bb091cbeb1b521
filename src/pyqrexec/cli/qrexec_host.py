"""qrexec-host: the domain manager of a plain Linux host (docs/reference/cli.md#qrexec-host)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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
  list                             table: name, type, state, domid, label
  run [-u USER] NAME -- CMD...     run CMD in NAME through qrexec-client (like qvm-run;
                                   starts NAME; stdin/stdout/exit status passed through)
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
"""


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
    sub.add_parser("down", help="stop every domain and the manager")
    for name in ("start", "stop"):
        sub.add_parser(name, help=f"{name} one domain").add_argument("name")
    sub.add_parser("list", help="table of domains")
    run_p = sub.add_parser("run", help="run a command in a domain (like qvm-run)")
    run_p.add_argument("-u", "--user", default="DEFAULT")
    run_p.add_argument("name")
    run_p.add_argument("cmd", nargs=argparse.REMAINDER)
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
    args = _parser().parse_args(argv)
    state = (args.state_dir or default_state_dir()).resolve()
    if args.command == "up":
        return _up(args, state)
    if args.command == "demo":
        return _demo(args)
    if args.command == "logs":
        return _logs(args, state)
    return _client(args, state)


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
    ready_fd: int | None = None
    if args.detach:
        rfd, wfd = os.pipe()
        if os.fork() != 0:
            os.close(wfd)
            answer = os.read(rfd, 1)
            if answer == b"1":
                return 0
            print(f"qrexec-host: start failed; see {state / 'log' / 'qrexec-host.log'}",
                  file=sys.stderr)
            return 1
        os.close(rfd)
        ready_fd = wfd
        os.setsid()
        (state / "log").mkdir(exist_ok=True)
        fd = os.open(state / "log" / "qrexec-host.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o640)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
    status = _serve(cfg, state, bwrap, args.policy_agent_arg, ready_fd)
    if ready_fd is not None:
        os._exit(status)
    return status


def _serve(cfg: object, state: Path, bwrap: str | None, agent_args: list[str],
           ready_fd: int | None) -> int:
    import asyncio
    import signal

    from ..host.config import HostConfig
    from ..host.manager import Manager
    from ..host.qubesd_server import HostError

    assert isinstance(cfg, HostConfig)

    async def amain() -> int:
        manager = Manager(cfg, state, bwrap, policy_agent_args=agent_args)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(manager.shutdown()))
        try:
            await manager.up()
        except (HostError, OSError) as err:
            print(f"qrexec-host: {err}", file=sys.stderr)
            await manager.shutdown()
            return 1
        mode = f"bubblewrap ({bwrap})" if bwrap else "plain processes"
        print(f"qrexec-host: up; state {state}; sandbox: {mode}", file=sys.stderr, flush=True)
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        await manager.stopped.wait()
        print("qrexec-host: down", file=sys.stderr, flush=True)
        return 0

    return asyncio.run(amain())


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
    up = subprocess.Popen([*me, "up", *sandbox, *agent],
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
        subprocess.run([*me, "down"], stdout=subprocess.DEVNULL)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)
    return status


# -- commands talking to a running manager ---------------------------------------------------
def _client(args: argparse.Namespace, state: Path) -> int:
    import json
    import time

    from ..host.manager import Paths, program
    from ..host.qubesd import QubesdError, call

    paths = Paths.make(state, state, os.environ)  # dom0's root matters only to `up`
    sock = str(paths.qubesd)

    def qcall(method: str, dest: str = "dom0", ok: tuple[str, ...] = ()) -> bytes:
        try:
            return call(method, dest, path=sock)
        except QubesdError as err:
            if err.exc_type in ok:
                return b""
            raise

    try:
        if args.command == "down":
            qcall("pyqrexec.host.Shutdown")
            deadline = time.monotonic() + 60
            while os.path.exists(sock) and time.monotonic() < deadline:
                time.sleep(0.05)
            return 0
        if args.command == "start":
            qcall("admin.vm.Start", args.name)
            return 0
        if args.command == "stop":
            qcall("admin.vm.Kill", args.name)
            return 0
        if args.command == "list":
            rows = json.loads(qcall("pyqrexec.host.List"))
            table = [("NAME", "TYPE", "STATE", "DOMID", "LABEL")] + [
                (r["name"], r["type"], r["state"],
                 "-" if r["domid"] is None else str(r["domid"]), r["label"]) for r in rows]
            widths = [max(len(row[i]) for row in table) for i in range(5)]
            for row in table:
                print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            return 0
        if args.command == "run":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                print("qrexec-host: run: no command given", file=sys.stderr)
                return 2
            if args.name == "dom0":
                return _run_in_dom0(json.loads(qcall("pyqrexec.host.Exec", "dom0")),
                                    args.user, cmd)
            qcall("admin.vm.Start", args.name, ok=("QubesVMNotHaltedError",))
            import shlex

            line = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
            argv = [*program("qrexec-client"), f"--socket-dir={paths.socket_dir}",
                    "-d", args.name, f"{args.user}:{line}"]
            os.execve(argv[0], argv, paths.client_env(os.environ))
        if args.command == "call":
            qcall("admin.vm.Start", args.source, ok=("QubesVMNotHaltedError",))
            spec = json.loads(qcall("pyqrexec.host.Exec", args.source))
            if "agent_socket" not in spec:
                print(f"qrexec-host: call: {args.source} has no qrexec-agent; in dom0 use "
                      "`run dom0 -- qrexec-client …`", file=sys.stderr)
                return 2
            rest = args.args[1:] if args.args[:1] == ["--"] else args.args
            root = spec.get("root")
            if root and rest and rest[0].startswith("/"):
                # plain mode shares the host's filesystem: a program named by its path in
                # the domain is found in the domain's root first
                inside = os.path.join(root, rest[0].lstrip("/"))
                if os.path.exists(inside):
                    rest = [inside, *rest[1:]]
            argv = [*spec["prefix"], *program("qrexec-client-vm"),
                    f"--agent-socket={spec['agent_socket']}", "--", args.target,
                    args.service, *rest]
            import shutil

            from ..host.limits import join

            try:
                join(spec.get("cgroup", []))
            except OSError as err:
                print(f"qrexec-host: call: cannot join {args.source}'s cgroup: {err}",
                      file=sys.stderr)
                return 1
            exe = shutil.which(argv[0]) or argv[0]
            os.execve(exe, argv, spec["env"])
    except QubesdError as err:
        print(f"qrexec-host: {err}", file=sys.stderr)
        return 1
    return 2


def _run_in_dom0(spec: dict[str, object], user: str, cmd: list[str]) -> int:
    """`run dom0`: dom0 is this host, so the command runs here, with dom0's environment; as
    for a domain, one word is a shell command line and more are an argv."""
    from ..host.sandbox import user_wrapper

    env = spec["env"]
    assert isinstance(env, dict)
    argv = ["/bin/sh", "-c", cmd[0]] if len(cmd) == 1 else cmd
    argv = [*user_wrapper(None if user == "DEFAULT" else user), *argv]
    import shutil

    exe = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
    try:
        os.execve(exe, argv, env)
    except OSError as err:
        print(f"qrexec-host: run: {argv[0]}: {err.strerror}", file=sys.stderr)
    return 127


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
