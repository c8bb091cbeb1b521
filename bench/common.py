"""Shared helpers of the benchmark scripts (not a test: they print figures and ratios).

Every script measures the programs as a user runs them: the console scripts a normal
`pip install` of this tree creates, in a virtual environment of the interpreter named by
`$BENCH_PYTHON` (default: Debian's `/usr/bin/python3` when there is one, else this Python).
`use_installed()` builds that environment once per source tree (cached under
`$BENCH_VENV_DIR`, default /tmp/pyqrexec-bench) and re-runs the script under its Python, so
that `sys.executable` is the interpreter the scripts use and the floors are measured with it.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def compile_package() -> None:
    """Start-up is measured with bytecode compiled, as a normal install has it."""
    import pyqrexec

    compileall.compile_dir(str(Path(pyqrexec.__file__).parent), quiet=1)


def _tree_hash(root: Path = ROOT) -> str:
    h = hashlib.sha256()
    for path in sorted([root / "pyproject.toml", *(root / "scripts").glob("*"),
                       *(root / "src").rglob("*.py")]):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def installed(root: Path = ROOT) -> Path:
    """The bin directory of source tree `root` installed by pip into its own virtual
    environment of the benchmarks' interpreter (made once per tree content, compiled)."""
    base = Path(os.environ.get("BENCH_VENV_DIR", "/tmp/pyqrexec-bench"))
    python = os.environ.get("BENCH_PYTHON") or (
        "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable)
    venv = base / f"{Path(python).name}-{_tree_hash(root)}"
    bindir = venv / "bin"
    if not (bindir / "qrexec-client").exists():
        # world-readable: the benchmarks run agents as `nobody` from the same install
        base.mkdir(mode=0o755, exist_ok=True)
        os.chmod(base, 0o755)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(bindir / "python3"), "-m", "pip", "install", "-q", "--no-deps",
                        str(root)], check=True, stdout=subprocess.DEVNULL)
        _prune(base, venv)
    os.utime(venv)  # its time says when it was last used
    return bindir


#: environments kept in the cache: one is made per tree content (~30 MiB each), and a
#: session of measuring changes leaves dozens
KEPT_ENVIRONMENTS = 12


def _prune(base: Path, new: Path) -> None:
    """Remove all but the `KEPT_ENVIRONMENTS` most recently used environments under `base`
    (never `new`, nor one used in the last hour: another benchmark may be running it)."""
    envs = sorted((p for p in base.iterdir() if (p / "pyvenv.cfg").exists() and p != new),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in envs[KEPT_ENVIRONMENTS - 1:]:
        if time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)


def use_installed() -> Path:
    """The bin directory of the installed scripts; re-executes this script under its Python
    the first time (everything before this call runs twice)."""
    bindir = installed()
    if Path(sys.prefix) == bindir.parent:
        return bindir
    sys.stdout.flush()
    os.execv(bindir / "python3", [str(bindir / "python3"), *sys.argv])


def timed(argv: list[str] | str, n: int, **kw: object) -> float:
    """Seconds per run of `argv`, run `n` times sequentially."""
    shell = isinstance(argv, str)
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(argv, shell=shell, check=True, **kw)  # type: ignore[call-overload]
    return (time.perf_counter() - t0) / n


def best_of(rounds: int, measure: object, *args: object, **kw: object) -> float:
    """The smallest of `rounds` measurements: on a shared machine the others carry noise."""
    return min(measure(*args, **kw) for _ in range(rounds))  # type: ignore[operator]


def paired(first: list[float], second: list[float]) -> str:
    """`first` against `second`, measured in pairs (seconds): the median of the pairs'
    differences, its quartiles, and in how many pairs `first` was the faster (a sign test:
    15 of 20 or more is unlikely by chance, p < 0.05). A machine whose speed drifts blurs
    this far less than two bests or two medians."""
    diffs = sorted((a - b) * 1e3 for a, b in zip(first, second, strict=True))
    q1, mid, q3 = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else diffs * 3
    faster = sum(d < 0 for d in diffs)
    return (f"median {mid:+6.2f} ms (quartiles {q1:+.2f} .. {q3:+.2f}),"
            f" faster in {faster} of {len(diffs)} rounds")


def fork_exec_true(n: int) -> float:
    """Seconds per fork+exec+wait of /bin/true (posix_spawn, no shell)."""
    t0 = time.perf_counter()
    for _ in range(n):
        pid = os.posix_spawn("/bin/true", ["true"], os.environ)
        os.waitpid(pid, 0)
    return (time.perf_counter() - t0) / n


def serve_in_threads(srv: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Accept on listening `srv` in a background thread; each connection is handled in its
    own thread (a stand-in server of a benchmark)."""

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def serve_unix(path: str, answer: bytes, complete: Callable[[bytes], bool]) -> None:
    """A stand-in server on `path`, in threads: each connection gets `answer` once what it
    sent is `complete` (or at its EOF)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(512)

    def handle(conn: socket.socket) -> None:
        with conn:
            data = b""
            while not complete(data) and (chunk := conn.recv(4096)):
                data += chunk
            conn.sendall(answer)

    serve_in_threads(srv, handle)
def python_start(n: int) -> float:
    """Seconds per `python3 -c pass` with the interpreter the installed scripts use."""
    return timed([sys.executable, "-c", "pass"], n)


def peak_rss_mib(argv: list[str], **kw: object) -> tuple[int, float]:
    """(exit status, peak resident set in MiB) of one run of `argv`.

    Run under GNU time, a small process: a child's peak counts what its parent had mapped
    when it forked (or vforked) it, which for this script is more than a client uses."""
    with tempfile.NamedTemporaryFile("r") as out:
        status = subprocess.run(["/usr/bin/time", "-q", "-f", "%M", "-o", out.name, *argv],
                                **kw).returncode  # type: ignore[call-overload]
        return status, int(out.read().split()[-1]) / 1024


def rss_mib(pid: int) -> float:
    """Resident set of a running process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def smaps_mib(pid: int) -> dict[str, float]:
    """A running process's memory from /proc/PID/smaps_rollup, MiB: "Rss", "Pss" (shared
    pages divided among their sharers) and "Private" (its own pages)."""
    kib: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        kib[key] = int(rest.split()[0])
    return {"Rss": kib["Rss"] / 1024, "Pss": kib["Pss"] / 1024,
            "Private": (kib["Private_Clean"] + kib["Private_Dirty"]) / 1024}


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())

