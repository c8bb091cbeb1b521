"""Policy daemon throughput: 1,000 rules in 20 files, requests over the policy socket.

Prints requests per second and median latency for sequential requests (one connection after
the other, as qrexec-daemon workers do) and for concurrent clients, next to a baseline measured
in the same run: a bare Unix-socket echo server answering the same way (connect, send, shut down
the write side, read to EOF), so that the ratio is comparable across machines.

It then runs the daemon again with `--no-audit` and prints the decisions per second with and
without the audit trail (docs/audit.md), and their ratio.

    PYTHONPATH=src python3 bench/policy_bench.py [--requests 1000] [--concurrency 8]
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

            def start_daemon(name: str, *extra: str) -> str:
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
                    env=env,
                    stderr=subprocess.DEVNULL,
                )
                procs.append(daemon)
                wait_for(sock, daemon)
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
            # with and without the audit trail: two fresh daemons with the same history,
            # alternating rounds so that load changes on a shared machine hit both alike;
            # the best round of each
            (tmp / "log" / "qrexec-audit.jsonl").unlink()
            policy_sock, bare_sock = start_daemon("audited"), start_daemon("bare", "--no-audit")
            for sock in (policy_sock, bare_sock):
                sequential(sock, request, 200)
            audited: list[float] = []
            bare: list[float] = []
            for r in range(8):
                rounds = [(audited, policy_sock), (bare, bare_sock)]
                for figures, sock in rounds if r % 2 else reversed(rounds):
                    figures.append(sequential(sock, request, args.requests // 2)[0])
            audit_lines = len((tmp / "log" / "qrexec-audit.jsonl").read_bytes().splitlines())
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
    on, off = statistics.median(audited), statistics.median(bare)
    print(f"audit trail on : {on:8.0f} decisions/s ({audit_lines} lines written)")
    print(f"audit trail off: {off:8.0f} decisions/s")
    print(f"audit ratio on/off: {on / off:.3f} (median of 8 alternating rounds)")


if __name__ == "__main__":
    main()
