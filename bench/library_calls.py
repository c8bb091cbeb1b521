#!/usr/bin/env python3
"""Per-call latency through the client library (`pyqrexec.api`), no interpreter start per
call: N sequential dom0 -> VM calls and N sequential VM -> VM calls, the policy answered by
the real `qrexec-policy-daemon`. Baseline in the same run: fork+exec of /bin/true; the CLIs'
figures are printed beside for comparison.

Goals (issue 12): dom0 -> VM <= 5x fork+exec, VM -> VM <= 8x.
Run once with unprivileged agents (`setpriv` to nobody) and once with root agents. A root
agent starts what it runs through a login shell, as any agent does, C's too
(docs/reference/services.md): root's own shell with `-l` for a `root:` command, `/bin/sh -l`
for a service. Their cost alone, measured in the same run, is taken off the root agents'
figures before the ratio (and printed), as the CLI benchmarks add it to their floor.
Usage: bench/library_calls.py [N]   (default 200)
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import fork_exec_true, serve_in_threads, timed, use_installed
from pyqrexec.api import Dom0Client, DomainClient
from pyqrexec.host.launchers import program
from pyqrexec.host.plain import PlainDomain, PlainHost

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
POLICY = "test.True * work vault allow\n"


def serve_system_info(path: str, domains: list[PlainDomain]) -> None:
    """A qubesd stand-in for the policy daemon: `internal.GetSystemInfo` only."""
    info: dict[str, dict[str, object]] = {
        "dom0": {"type": "AdminVM", "tags": [], "uuid": "00000000-0000-0000-0000-000000000000",
                 "default_dispvm": None, "template_for_dispvms": False,
                 "power_state": "Running", "icon": "adminvm-black", "guivm": None,
                 "relayvm": None, "transport_rpc": None, "internal": None}}
    for dom in domains:
        info[dom.name] = {"type": "AppVM", "tags": [], "uuid": dom.uuid, "default_dispvm": None,
                          "template_for_dispvms": False, "power_state": "Running",
                          "icon": "appvm-red", "guivm": "dom0", "relayvm": None,
                          "transport_rpc": None, "internal": None}
    answer = b"0\0" + json.dumps({"domains": info}).encode()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)

    def handle(conn: socket.socket) -> None:
        with conn:
            while conn.recv(65536):
                pass
            conn.sendall(answer)

    serve_in_threads(srv, handle)


def per_call(fn: Callable[[], object], n: int) -> float:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def measure(n: int, unprivileged: bool) -> dict[str, float]:
    user = "nobody" if unprivileged else "root"
    wrapper = NOBODY if unprivileged else None
    with PlainHost(os.environ) as host:
        root = Path(host.root)
        rpc = root / "rpc"
        rpc.mkdir()
        svc = rpc / "test.True"
        svc.write_text("#!/bin/sh\nexit 0\n")
        svc.chmod(0o755)
        policy_dir = root / "policy.d"
        policy_dir.mkdir()
        (policy_dir / "30-bench.policy").write_text(POLICY)
        work = host.add("work", 1, user=user)
        vault = host.add("vault", 2, user=user)
        serve_system_info(str(root / "qubesd.sock"), [work, vault])
        policy_env = host.env(0, QUBESD_INTERNAL_SOCKET=str(root / "qubesd.sock"),
                              QREXEC_LEGACY_POLICY_DIR=str(root / "legacy"),
                              QREXEC_LOG_DIR=str(root))
        policy_env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
        log = open(root / "policy-daemon.log", "ab")  # noqa: SIM115 - handed to the child
        policy = subprocess.Popen(
            [*program("qrexec-policy-daemon"), "--policy-path", str(policy_dir),
             "--socket-path", str(root / "policy.sock"),
             "--eval-socket-path", str(root / "eval.sock"),
             "--gui-socket-path", str(root / "gui.sock")],
            env=policy_env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            while not (root / "policy.sock").exists():
                if policy.poll() is not None:
                    raise RuntimeError(f"policy daemon exited; see {log.name}")
                time.sleep(0.02)
            agent_env = {"QREXEC_SERVICE_PATH": str(rpc),
                         "QUBES_RPC_CONFIG_PATH": str(root / "no-rpc-config")}
            for dom in (work, vault):
                dom.start(agent_env=agent_env, agent_wrapper=wrapper,
                          daemon_env={"QREXEC_POLICY_SOCKET": str(root / "policy.sock")})
            return _calls(host, n, user)
        finally:
            policy.terminate()
            policy.wait(10)
            log.close()


def _calls(host: PlainHost, n: int, user: str) -> dict[str, float]:
    out: dict[str, float] = {}
    with Dom0Client(socket_dir=str(host.socket_dir), vchan_dir=str(host.vchan_dir),
                    own_domain=0) as dom0:
        def cmd() -> None:
            assert dom0.run("work", f"{user}:true").returncode == 0

        def service() -> None:
            assert dom0.run_service("work", "test.True").returncode == 0

        out["dom0_cmd"] = per_call(cmd, n)
        out["dom0_service"] = per_call(service, n)
    with DomainClient(agent_socket=str(host.root / "agent.work"),
                      vchan_dir=str(host.vchan_dir), own_domain=1) as vm:
        def vm_call() -> None:
            assert vm.call("vault", "test.True").returncode == 0

        out["vm_vm"] = per_call(vm_call, n)
    cli_n = max(n // 4, 10)
    out["cli_dom0_cmd"] = timed(host.client_argv("-d", "work", f"{user}:true"), cli_n,
                                env=host.env(0))
    out["cli_vm_vm"] = timed(host.client_vm_argv("work", "vault", "test.True"), cli_n,
                             env=host.env(1))
    return out


def _login_shells(n: int) -> dict[str, float]:
    """Seconds per run of what a root agent wraps each call in, alone: root's login shell
    (a `root:` command) and `/bin/sh -l` (a service)."""
    root = pwd.getpwnam("root")
    env = dict(os.environ, HOME=root.pw_dir, USER="root", LOGNAME="root",
               SHELL=root.pw_shell or "/bin/sh")
    shell = timed([root.pw_shell or "/bin/sh", "-l", "-c", "true"], n, env=env, cwd=root.pw_dir)
    service = timed(["/bin/sh", "-l", "-c", "true"], n, env=env, cwd=root.pw_dir)
    return {"dom0_cmd": shell, "dom0_service": service, "vm_vm": service}


def main() -> None:
    # the installed scripts and their interpreter, as the other benchmarks: the CLIs' line
    # compares the same programs `call_latency.py` and `vm_calls.py` measure
    use_installed()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    modes = [("unprivileged agents", True)]
    if os.geteuid() == 0:
        modes.append(("root agents", False))
    for title, unprivileged in modes:
        base = fork_exec_true(n)
        got = measure(n, unprivileged)
        shells = {} if unprivileged else _login_shells(max(n // 10, 10))
        print(f"client library, {n} sequential calls each, {title}; policy: "
              "qrexec-policy-daemon")
        print(f"  fork+exec of true:                 {base * 1e3:7.2f} ms")
        rows = [
            ("dom0 -> VM `USER:true`", "dom0_cmd", 5),
            ("dom0 -> VM service test.True", "dom0_service", 5),
            ("VM -> VM test.True", "vm_vm", 8),
        ]
        for label, key, goal in rows:
            shell = shells.get(key, 0.0)
            if shell > 20 * goal * base:
                # a login shell of ~100 ms (a profile that starts pyenv, say) varies by more
                # than the whole call costs: what is left after it says nothing
                print(f"  {label:33s} {got[key] * 1e3:7.2f} ms   its login shell alone "
                      f"{shell * 1e3:.2f} ms: no ratio")
                continue
            ratio = (got[key] - shell) / base
            verdict = "ok" if ratio <= goal else "over"
            print(f"  {label:33s} {got[key] * 1e3:7.2f} ms   ratio {ratio:6.1f}x  "
                  f"(goal <= {goal}x: {verdict})"
                  + (f"  after its login shell's {shell * 1e3:.2f} ms" if shell else ""))
        print(f"  the CLIs, same host: qrexec-client {got['cli_dom0_cmd'] * 1e3:.2f} ms, "
              f"qrexec-client-vm {got['cli_vm_vm'] * 1e3:.2f} ms per call")


if __name__ == "__main__":
    main()
