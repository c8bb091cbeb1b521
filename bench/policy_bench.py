"""Policy daemon throughput: 1,000 rules in 20 files, requests over the policy socket.

Prints requests per second and median latency for sequential requests (one connection after
the other, as qrexec-daemon workers do) and for concurrent clients, next to a baseline measured
in the same run: a bare Unix-socket echo server answering the same way (connect, send, shut down
the write side, read to EOF), so that the ratio is comparable across machines.

It then compares the daemon with and without the audit trail (docs/audit.md): `--pairs` pairs
of fresh daemons, one with the trail and one with `--no-audit`, started in alternating order and
measured in alternating rounds, both pinned to the same CPU (the client to another) and with the
same hash seed, so that the load of a shared machine and the luck of placement hit both alike.
It prints the decisions per second of each (median of the rounds), the ratio of each pair, and
the daemons' own CPU time per decision (the capacity: decisions per CPU-second), which the
machine's load disturbs much less than wall time. `--control` runs both daemons of each pair
without the trail: the ratios it prints are the measurement's noise.

    PYTHONPATH=src python3 bench/policy_bench.py [--requests 1000] [--concurrency 8]
                                                 [--pairs 3] [--control]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration" / "fixtures"))
from fakes import FIXTURE, query  # noqa: E402
from processes import SRC, wait_for  # noqa: E402

# A server in its own process: answers every connection with `REPLY` once the client has sent
# everything (echo mode: the request itself).
SERVER = """
import asyncio, sys
path, mode = sys.argv[1], sys.argv[2]
reply = open(sys.argv[3], "rb").read() if mode == "file" else None
async def handle(reader, writer):
    data = await reader.read()
    writer.write(reply if reply is not None else data)
    await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_unix_server(handle, path)
    await server.serve_forever()
asyncio.run(main())
"""


def write_policy(directory: Path) -> None:
    """20 files of 50 rules; the benchmark request is decided by the last rule of the last file."""
    vms = ["work", "personal", "vault", "sys-usb", "relay", "fedora"]
    for f in range(20):
        lines = ["# generated for the benchmark"]
        for r in range(50):
            service = f"bench.S{f}x{r % 10}"
            src, dst = vms[r % len(vms)], vms[(r + 1) % len(vms)]
            action = ("allow", "deny", "ask default_target=vault")[r % 3]
            lines.append(f"{service} +a{r} {src} {dst} {action}")
        if f == 19:
            lines[-1] = "test.Svc * @tag:work @anyvm allow"
        (directory / f"{f + 10:02d}-bench.policy").write_text("\n".join(lines) + "\n")


def sequential(path: str, data: bytes, count: int) -> tuple[float, float, bytes]:
    """(requests/s, median latency in ms, last answer)."""
    latencies = []
    answer = b""
    start = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        answer = query(path, data)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    return count / elapsed, statistics.median(latencies) * 1000, answer


def concurrent(path: str, data: bytes, count: int, clients: int) -> float:
    """requests/s with `clients` threads sending `count` requests in total."""
    per_client = count // clients

    def client() -> None:
        for _ in range(per_client):
            query(path, data)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per_client * clients / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--control", action="store_true", help="both daemons without the trail")
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "etc").mkdir()
        write_policy(tmp / "etc")
        info = tmp / "info"
        info.write_bytes(b"0\0" + json.dumps(json.loads(FIXTURE.read_bytes())).encode())
        env = dict(os.environ, PYTHONPATH=SRC, QUBESD_INTERNAL_SOCKET=str(tmp / "qubesd.sock"))
        env["QREXEC_LEGACY_POLICY_DIR"] = str(tmp / "legacy")
        env["QREXEC_SERVICE_PATH"] = str(tmp)
        try:
            for path, mode in ((tmp / "qubesd.sock", "file"), (tmp / "echo.sock", "echo")):
                procs.append(
                    subprocess.Popen([sys.executable, "-c", SERVER, str(path), mode, str(info)])
                )
                wait_for(str(path), procs[-1])
            env["QREXEC_LOG_DIR"] = str(tmp / "log")

            def start_daemon(name: str, *extra: str, cpus: set[int] | None = None) -> str:
                sock = str(tmp / f"{name}.sock")
                daemon_args = [
                    f"--policy-path={tmp / 'etc'}",
                    f"--socket-path={sock}",
                    f"--eval-socket-path={tmp / name}-eval.sock",
                    f"--gui-socket-path={tmp / name}-gui.sock",
                    *extra,
                ]
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "pyqrexec.cli.qrexec_policy_daemon", *daemon_args],
                    env=dict(env, PYTHONHASHSEED="0"),
                    stderr=subprocess.DEVNULL,
                    preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
                )
                procs.append(daemon)
                # the request socket's file exists from bind(), a moment before listen();
                # the GUI socket is made after that listen()
                wait_for(f"{tmp / name}-gui.sock", daemon)
                return sock

            request = b"source=work\nintended_target=vault\nservice_and_arg=test.Svc+x\n\n"
            policy_sock, echo_sock = start_daemon("policy"), str(tmp / "echo.sock")
            sequential(policy_sock, request, 50)  # warm up
            sequential(echo_sock, request, 50)
            echo_rps, echo_ms, _ = sequential(echo_sock, request, args.requests)
            rps, ms, answer = sequential(policy_sock, request, args.requests)
            if not answer.startswith(b"user=DEFAULT\nresult=allow\ntarget=vault"):
                raise SystemExit(f"unexpected answer: {answer!r}")
            c_echo = concurrent(echo_sock, request, args.requests, args.concurrency)
            c_rps = concurrent(policy_sock, request, args.requests, args.concurrency)
            (tmp / "log" / "qrexec-audit.jsonl").unlink()
            pairs = [audit_pair(start_daemon, procs, request, args, p) for p in range(args.pairs)]
            audit_log = tmp / "log" / "qrexec-audit.jsonl"
            audit_lines = len(audit_log.read_bytes().splitlines()) if audit_log.exists() else 0
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
    n, c = args.requests, args.concurrency
    print(f"policy: 1000 rules in 20 files; {n} requests; {os.cpu_count()} CPUs")
    print(f"sequential  policy daemon: {rps:8.0f} requests/s, median latency {ms:.3f} ms")
    print(f"sequential  echo baseline: {echo_rps:8.0f} requests/s, median latency {echo_ms:.3f} ms")
    print(f"sequential  ratio policy/echo: {rps / echo_rps:.3f}")
    print(f"concurrent ({c} clients) policy daemon: {c_rps:8.0f} requests/s")
    print(f"concurrent ({c} clients) echo baseline: {c_echo:8.0f} requests/s")
    print(f"concurrent  ratio policy/echo: {c_rps / c_echo:.3f}")
    label = "control: no trail in either" if args.control else "audit trail"
    print(f"{label}: {args.pairs} pairs of fresh daemons, {ROUNDS} alternating rounds of "
          f"{n // 2} requests each; {audit_lines} audit lines written")
    for p, (on, off, cpu_on, cpu_off) in enumerate(pairs):
        print(f"  pair {p}: on {on:6.0f}/s  off {off:6.0f}/s  ratio {on / off:.3f};  "
              f"CPU per decision on {cpu_on:6.1f} us  off {cpu_off:6.1f} us  "
              f"capacity ratio {cpu_off / cpu_on:.3f}")
    wall = statistics.median(on / off for on, off, _, _ in pairs)
    capacity = statistics.median(cpu_off / cpu_on for _, _, cpu_on, cpu_off in pairs)
    print(f"audit ratio on/off: {wall:.3f} decisions/s (median of the pairs)")
    print(f"audit ratio on/off: {capacity:.3f} decisions per CPU-second (median of the pairs)")


ROUNDS = 8


def _cpu_ns(pid: int) -> int:
    """CPU time the process has used, in ns (the scheduler's own count, not clock ticks)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def audit_pair(
    start_daemon: Callable[..., str], procs: list[subprocess.Popen[bytes]], request: bytes,
    args: argparse.Namespace, number: int,
) -> tuple[float, float, float, float]:
    """(decisions/s with the trail, without, CPU us per decision with, without) of one pair."""
    cpus = sorted(os.sched_getaffinity(0))
    client_cpus = daemon_cpus = None
    if len(cpus) > 1:
        client_cpus, daemon_cpus = {cpus[0]}, {cpus[-1]}
    on_extra = ("--no-audit",) if args.control else ()
    # the order of starting alternates: the first daemon of a pair is not favoured
    if number % 2:
        off_sock = start_daemon(f"bare{number}", "--no-audit", cpus=daemon_cpus)
        on_sock = start_daemon(f"audited{number}", *on_extra, cpus=daemon_cpus)
        on_proc, off_proc = procs[-1], procs[-2]
    else:
        on_sock = start_daemon(f"audited{number}", *on_extra, cpus=daemon_cpus)
        off_sock = start_daemon(f"bare{number}", "--no-audit", cpus=daemon_cpus)
        on_proc, off_proc = procs[-2], procs[-1]
    saved = os.sched_getaffinity(0)
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)
    try:
        for sock in (on_sock, off_sock):
            sequential(sock, request, 200)
        rates: dict[str, list[float]] = {on_sock: [], off_sock: []}
        cpu: dict[str, int] = {on_sock: 0, off_sock: 0}
        count = args.requests // 2
        for r in range(ROUNDS):
            order = [(on_sock, on_proc), (off_sock, off_proc)]
            for sock, proc in order if r % 2 else reversed(order):
                before = _cpu_ns(proc.pid)
                rates[sock].append(sequential(sock, request, count)[0])
                cpu[sock] += _cpu_ns(proc.pid) - before
    finally:
        os.sched_setaffinity(0, saved)
    per = ROUNDS * count * 1000  # ns -> us per decision
    return (statistics.median(rates[on_sock]), statistics.median(rates[off_sock]),
            cpu[on_sock] / per, cpu[off_sock] / per)

if __name__ == "__main__":
    main()
