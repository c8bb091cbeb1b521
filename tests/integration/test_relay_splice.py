"""A service's bulk stdout through a real handler, and a caller's bulk stdin through the real
`qrexec-client`: spliced, and read plainly where splice() fails, with the same bytes at the
other end either way.

The agent (or the client) runs under `strace`, which records its splice() calls (proof that
the bytes took the spliced path) or makes each of them fail with EINVAL as a kernel or a
system-call filter without splice would (the fallback). Only splice() stops the traced
processes (`--seccomp-bpf`), so the calls run at nearly full speed.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .fixtures.processes import Domain, QrexecHost, program

pytestmark = pytest.mark.skipif(shutil.which("strace") is None,
                                reason="needs strace (Debian package strace)")

MiB = 1 << 20
#: the handler's splice() calls: ours are the only ones that pass SPLICE_F_NONBLOCK
_HANDLER_SPLICE = re.compile(r"splice\(.*SPLICE_F_NONBLOCK\) = (-?\d+)")


def _pattern(size: int) -> bytes:
    block = hashlib.sha256(b"spliced").digest() * 2048  # 64 KiB, not all-zero
    return (block * (size // len(block) + 1))[:size]


def _traced_domain(host: QrexecHost, log: Path, *strace: str) -> Domain:
    dom = host.domain("traced", 6)
    # -I1: strace ends at the SIGTERM that stops the domain (with -o it would ignore it);
    # the agent dies with it
    dom.start_agent(wrapper=["strace", "-f", "-qq", "-I1", "--seccomp-bpf", "-e", "trace=splice",
                             *strace, "-o", str(log), "setpriv", "--pdeathsig=KILL"])
    dom.start_daemon()
    return dom


def _handler_splices(log: Path) -> list[int]:
    return [int(m.group(1)) for m in _HANDLER_SPLICE.finditer(log.read_text())]


def _call_output(host: QrexecHost, data: bytes) -> bytes:
    src = host.root / "pattern"
    src.write_bytes(data)
    r = host.client("-d", "traced", f"root:head -c {len(data)} {src}", timeout=240)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_bulk_output_is_spliced_and_exact(host: QrexecHost) -> None:
    log = host.root / "splice.trace"
    _traced_domain(host, log)
    data = _pattern(256 * MiB)
    out = _call_output(host, data)
    assert len(out) == len(data)
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    moved = _handler_splices(log)
    assert all(n >= 0 for n in moved)
    # into the pipe and out of it: everything but the first MiB, read plainly
    assert sum(moved) >= 2 * (len(data) - 2 * MiB)


def test_without_splice_the_output_is_read_and_exact(host: QrexecHost) -> None:
    log = host.root / "splice.trace"
    _traced_domain(host, log, "-e", "inject=splice:error=EINVAL")
    data = _pattern(64 * MiB)
    out = _call_output(host, data)
    assert len(out) == len(data)
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    assert _handler_splices(log) == [-1]  # one attempt, then plain reads


def _traced_client(host: QrexecHost, log: Path, data: bytes, *strace: str) -> bytes:
    """`qrexec-client -d work root:sha256sum` with `data` on its stdin, a pipe, under strace:
    the checksum the service computed."""
    argv = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=splice", *strace,
            "-o", str(log), *program("qrexec-client"), f"--socket-dir={host.socket_dir}",
            "-d", "work", "root:sha256sum"]
    r = subprocess.run(argv, input=data, capture_output=True, timeout=240, env=host.env(0))
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[0]


def test_bulk_stdin_from_a_pipe_is_spliced_and_exact(host: QrexecHost, work: Domain) -> None:
    """The caller's side: `qrexec-client`'s stdin, a pipe, goes into the channel by splice
    past the first MiB, straight from that pipe."""
    log = host.root / "client.trace"
    data = _pattern(256 * MiB)
    assert _traced_client(host, log, data) == hashlib.sha256(data).hexdigest().encode()
    moved = _handler_splices(log)
    # a full channel makes a non-blocking splice fail with EAGAIN; it is tried again
    assert set(_splice_errors(log)) <= {"EAGAIN"}
    assert sum(n for n in moved if n > 0) >= len(data) - 2 * MiB


def _splice_errors(log: Path) -> list[str]:
    return re.findall(r"splice\(.*SPLICE_F_NONBLOCK\) = -1 (E[A-Z]+)", log.read_text())


def test_without_splice_stdin_is_read_and_exact(host: QrexecHost, work: Domain) -> None:
    log = host.root / "client.trace"
    data = _pattern(64 * MiB)
    digest = _traced_client(host, log, data, "-e", "inject=splice:error=EINVAL")
    assert digest == hashlib.sha256(data).hexdigest().encode()
    assert _handler_splices(log) == [-1]  # one attempt, then plain reads
