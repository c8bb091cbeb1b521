"""`qrexec-host run` and `call`: a command in a domain, a disposable or every running
domain, and qrexec-client-vm inside a domain, with what the person at the terminal needs to
know when a call is refused (docs/qrexec-host.md)."""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..call.relay import unsafe_filter
from ..host.cgroups import join
from ..host.logsink import message_of
from ..host.paths import Paths
from ..host.sandbox import user_wrapper
from ..system.programs import program
from .host_admin import QCall

__all__ = ["run_command", "call_command"]


def call_command(args: argparse.Namespace, state: Path, paths: Paths, qcall: QCall) -> int:
    qcall("admin.vm.Start", args.source, ok=("QubesVMNotHaltedError",))
    spec = json.loads(qcall("pyqrexec.host.Exec", args.source))
    return _call(args, spec, paths.log_dir)


def run_command(args: argparse.Namespace, paths: Paths, qcall: QCall) -> int:
    """`run`: in one domain, a new disposable, or every running domain; the command's
    streams and exit status passed through."""
    words = list(args.words)
    name = None
    if args.dispvm is None and not args.all:
        if not words or words[0] == "--":
            return _usage("no domain given")
        name = words.pop(0)
    cmd = words[1:] if words[:1] == ["--"] else words
    line = _command_line(args, cmd)
    if line is None:
        return 2
    filter_esc = args.filter_esc
    if filter_esc is None:
        filter_esc = os.isatty(sys.stdout.fileno())
    if name == "dom0":
        if args.service:
            return _usage("--service in dom0: use qrexec-client")
        return _run_in_dom0(json.loads(qcall("pyqrexec.host.Exec", "dom0")),
                            args.user, cmd, filter_esc)
    if name is not None:
        return _run_in(name, args.user, line, filter_esc, paths, qcall)
    if args.all:
        names = [r["name"] for r in json.loads(qcall("pyqrexec.host.List"))
                 if r["state"] == "Running" and r["name"] != "dom0"]
        return max((_run_in(each, args.user, line, filter_esc, paths, qcall)
                    for each in names), default=0)
    disp = qcall("admin.vm.CreateDisposable", args.dispvm or "dom0").decode()
    try:
        return _run_in(disp, args.user, line, filter_esc, paths, qcall)
    finally:
        qcall("admin.vm.Kill", disp, ok=("QubesVMNotStartedError",))


def _usage(why: str) -> int:
    print(f"qrexec-host: run: {why}", file=sys.stderr)
    return 2


def _command_line(args: argparse.Namespace, cmd: list[str]) -> str | None:
    """The command line `run` sends (None: a usage error, said on stderr): one word is a
    shell command line, more an argv; with --service, the service call's line."""
    if not cmd:
        _usage("no command given")
        return None
    if args.service:
        if len(cmd) != 1 or not cmd[0] or any(c.isspace() for c in cmd[0]):
            _usage("--service takes one word, NAME[+ARG]")
            return None
        return f"QUBESRPC {cmd[0]} dom0"
    return cmd[0] if len(cmd) == 1 else shlex.join(cmd)


def _run_in(name: str, user: str, line: str, filter_esc: bool, paths: Paths,
            qcall: QCall) -> int:
    """qrexec-client -d NAME USER:LINE, NAME started first; Ctrl-C reaches the client (same
    process group), which ends the command."""
    qcall("admin.vm.Start", name, ok=("QubesVMNotHaltedError",))
    argv = [*program("qrexec-client"), f"--socket-dir={paths.socket_dir}", "-d", name,
            *(["-t", "-T"] if filter_esc else []), f"{user}:{line}"]
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        status = subprocess.call(argv, env=paths.client_env(os.environ))
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - status if status < 0 else status


def _call(args: argparse.Namespace, spec: dict[str, object], log_dir: Path) -> int:
    """qrexec-client-vm inside SOURCE, waited for here on the host: when the call is
    refused or finds no service, the person at this terminal is told why (the domain's
    program itself gets exactly what it gets on Qubes)."""
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

    filter_esc = args.filter_esc
    if filter_esc is None:
        filter_esc = os.isatty(sys.stdout.fileno())
    # the service's output comes from another domain: as for `run`, a terminal here gets it
    # filtered (qrexec-client-vm in the domain would filter only for the domain's terminal)
    pipe = subprocess.PIPE if filter_esc else None
    # Ctrl-C reaches the program (same process group); this side only reports
    signal.signal(signal.SIGINT, lambda *_: None)
    try:
        proc = subprocess.Popen([exe, *argv[1:]], env=env, preexec_fn=enter, stdout=pipe,
                                stderr=pipe)
    except (OSError, subprocess.SubprocessError) as err:
        print(f"qrexec-host: call: cannot run {argv[0]} in {args.source}: {err}",
              file=sys.stderr)
        return 1
    if filter_esc:
        _copy_filtered(proc)
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
    """What was logged since the mark, each line's message alone (host/logsink.py)."""
    try:
        with open(log, "rb") as f:
            f.seek(marks.get(log, 0))
            return [message_of(line)
                    for line in f.read(1 << 20).decode(errors="replace").splitlines()]
    except OSError:
        return []


def _when_logged(read: Callable[[], str], patience: float = 1.0) -> str:
    """`read()` again until it finds its line, for `patience` seconds at most: the logs are
    written by `qrexec-host up`, which relays what the programs print, so a line printed
    before the call ended may reach the file a moment after the caller has its answer."""
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
    signal.signal(signal.SIGINT, lambda *_: None)  # the program gets it and ends
    try:
        proc = subprocess.Popen([exe, *argv[1:]], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError as err:
        print(f"qrexec-host: run: {argv[0]}: {err.strerror}", file=sys.stderr)
        return 127
    _copy_filtered(proc)
    status = proc.wait()
    return 128 - status if status < 0 else status


def _copy_filtered(proc: subprocess.Popen[bytes]) -> None:
    """Copy `proc`'s piped stdout and stderr to ours, control characters made `_`, until
    both end."""
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
