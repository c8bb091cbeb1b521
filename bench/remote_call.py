"""One trivial call across two qrexec-hosts over localhost ssh (docs/remote.md) vs
`ssh localhost true` against the same sshd, in the same run.

Needs root (the receiving host and its sshd run as a test account) and OpenSSH's sshd.
The hosts are the integration tests' (tests/integration/fixtures/remote.py)."""

from __future__ import annotations

import subprocess
import sys
import time

from common import ROOT

sys.path.insert(0, str(ROOT))

N = 20


def main() -> int:
    from tests.integration import test_remote as t
    from tests.integration.fixtures.remote import ACCOUNT, SSHD, RemoteHost, join

    if SSHD is None:
        print("remote_call: sshd is not installed (openssh-server)", file=sys.stderr)
        return 1
    b = RemoteHost(t.B_CONFIG, {"relay-b": {}, "relay-b2": {}, "vault": t.VAULT, "local": {}},
                   t.B_POLICY, as_account=True)
    a = RemoteHost(t.A_CONFIG, {"work": {}, "relay-a": {}}, t.A_POLICY, as_account=False)
    try:
        b.start_sshd()
        join(a, "relay-a", "vault-b", b, "relay-b", "work")
        key = b.dir / "bench_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        with open(b.ssh_dir / "authorized_keys", "a") as f:
            f.write((b.dir / "bench_key.pub").read_text())
        known = b.dir / "bench_known_hosts"
        known.write_text(f"[127.0.0.1]:{b.port} {b.host_key()}\n")
        b.up()
        a.up()
        call = a.argv("call", "work", "vault-b", "test.Status+0")
        plain = ["ssh", "-T", "-i", str(key), "-p", str(b.port), "-o", "BatchMode=yes",
                 "-o", f"UserKnownHostsFile={known}", "-o", "LogLevel=QUIET",
                 f"{ACCOUNT}@127.0.0.1", "true"]
        for argv in (call, plain):  # warm up: relays started, caches filled
            subprocess.run(argv, check=True, env=a.env(), stdin=subprocess.DEVNULL)
        figures = {}
        for name, argv in (("remote call", call), ("ssh localhost true", plain)):
            t0 = time.perf_counter()
            for _ in range(N):
                subprocess.run(argv, check=True, env=a.env(), stdin=subprocess.DEVNULL)
            figures[name] = (time.perf_counter() - t0) / N
        for name, sec in figures.items():
            print(f"{name:>20}: {sec * 1000:7.1f} ms per call ({N} sequential)")
        print(f"{'ratio':>20}: {figures['remote call'] / figures['ssh localhost true']:.2f}x "
              "ssh localhost true")
    finally:
        a.close()
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
