"""A service's bulk stdout through a real handler: spliced, and read plainly where splice()
fails, with the same bytes at the caller either way.

The agent runs under `strace`, which records the handler's splice() calls (proof that the
bytes took the spliced path) or makes each of them fail with EINVAL as a kernel or a
system-call filter without splice would (the fallback). Only splice() stops the traced
processes (`--seccomp-bpf`), so the calls run at nearly full speed.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from .fixtures.processes import Domain, QrexecHost

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
