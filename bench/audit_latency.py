#!/usr/bin/env python3
"""Sequential VM -> VM call latency through the real qrexec-policy-daemon, with the audit
trail and without (docs/audit.md, "Cost").

Two policy daemons run side by side on the same policy: one keeps the trail, one has
`--no-audit`. The qrexec-daemons reach the policy through a directory symlink that is
switched between them before each call, alternating which one goes first, so both see the
same machine load; the trail's end reports (sent by the worker to `policy-audit.sock` beside
the policy socket) exist only through the audited one, as in a real deployment. Each call is
a `qrexec-client-vm anotherVM test.True` in `work`, timed from start to exit.
`--control` starts both daemons without the trail: the ratio it prints is the noise.

Usage: bench/audit_latency.py [--calls 200] [--control]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, compile_package, serve_unix
from pyqrexec.host.plain import PlainHost

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def domain_info(uuid: str, kind: str = "AppVM") -> dict[str, object]:
    return {"type": kind, "tags": [], "uuid": uuid, "default_dispvm": None,
            "template_for_dispvms": False, "power_state": "Running", "label": "0xcc0000",
            "icon": "appvm-red", "guivm": "dom0", "relayvm": None, "transport_rpc": None,
            "internal": None}


def start_policy_daemon(root: Path, name: str, env: dict[str, str],
                        *extra: str) -> subprocess.Popen[bytes]:
    directory = root / name
    directory.mkdir()
    sock = directory / "policy.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyqrexec.cli.qrexec_policy_daemon",
         f"--policy-path={root / 'policy.d'}", f"--socket-path={sock}",
         f"--eval-socket-path={directory / 'eval.sock'}",
         f"--gui-socket-path={directory / 'gui.sock'}", *extra],
        env=env, stderr=open(root / f"policy-{name}.log", "ab"),  # noqa: SIM115
    )
    deadline = time.monotonic() + 30
    # the GUI socket is made after the request socket's listen(): then calls may come
    while not (directory / "gui.sock").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"policy daemon {name} did not start; see policy-{name}.log")
        time.sleep(0.02)
    return proc


def point(link: Path, target: str) -> None:
    """Repoint the directory symlink `link` at `target`, atomically."""
    new = link.with_name(link.name + ".new")
    os.symlink(target, new)
    os.replace(new, link)


def call_once(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200, help="calls through each daemon")
    parser.add_argument("--control", action="store_true", help="no trail in either daemon")
    args = parser.parse_args()
    compile_package()
    procs: list[subprocess.Popen[bytes]] = []
    with PlainHost(os.environ, keep=os.environ.get("BENCH_KEEP") is not None) as host:
        root = host.root
        rpc = root / "rpc"
        rpc.mkdir()
        svc = rpc / "test.True"
        svc.write_text("#!/bin/sh\nexit 0\n")
        svc.chmod(0o755)
        work = host.add("work", 1, user="nobody")
        other = host.add("anotherVM", 2, user="nobody")
        info = {"domains": {
            "dom0": domain_info("00000000-0000-0000-0000-000000000000", "AdminVM"),
            "work": domain_info(work.uuid),
            "anotherVM": domain_info(other.uuid),
        }}
        # a qubesd stand-in: every request (read to its EOF) gets the system info
        serve_unix(str(root / "qubesd.sock"), b"0\0" + json.dumps(info).encode(),
                   lambda _: False)
        (root / "policy.d").mkdir()
        (root / "policy.d" / "30-bench.policy").write_text("test.True * work anotherVM allow\n")
        policy_env = dict(os.environ, PYTHONPATH=str(ROOT / "src"),
                          QUBESD_INTERNAL_SOCKET=str(root / "qubesd.sock"),
                          QREXEC_LEGACY_POLICY_DIR=str(root / "legacy"),
                          QREXEC_LOG_DIR=str(root / "log"))
        try:
            procs.append(start_policy_daemon(
                root, "on", policy_env, *(("--no-audit",) if args.control else ())))
            procs.append(start_policy_daemon(root, "off", policy_env, "--no-audit"))
            link = root / "current"
            point(link, "on")
            agent_env = {"QREXEC_SERVICE_PATH": str(rpc),
                         "QUBES_RPC_CONFIG_PATH": str(root / "no-rpc-config")}
            daemon_env = {"QREXEC_POLICY_SOCKET": str(link / "policy.sock")}
            for dom in (work, other):
                dom.start(agent_env=agent_env, agent_wrapper=NOBODY, daemon_env=daemon_env)
            env = host.env(work.domid)
            argv = host.client_vm_argv("work", "anotherVM", "test.True")
            times: dict[str, list[float]] = {"on": [], "off": []}
            for i in range(args.calls + 10):
                for mode in ("on", "off") if i % 2 else ("off", "on"):
                    point(link, mode)
                    took = call_once(argv, env)
                    if i >= 10:  # the first ones warm both paths up
                        times[mode].append(took)
            trail = root / "log" / "qrexec-audit.jsonl"
            lines = trail.read_bytes().splitlines() if trail.exists() else []
            ends = sum(1 for line in lines if b'"event":"end"' in line)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    label = "control: no trail in either daemon" if args.control else "audit trail"
    print(f"VM -> VM calls through the real policy daemon, {label}; {args.calls} calls each, "
          f"alternating; {os.cpu_count()} CPUs")
    print(f"  trail on : {on * 1e3:7.2f} ms per call (median; mean "
          f"{statistics.mean(times['on']) * 1e3:.2f}); {len(lines)} audit lines, {ends} ends")
    print(f"  trail off: {off * 1e3:7.2f} ms per call (median; mean "
          f"{statistics.mean(times['off']) * 1e3:.2f})")
    print(f"  latency ratio on/off: {on / off:.3f}")


if __name__ == "__main__":
    main()
