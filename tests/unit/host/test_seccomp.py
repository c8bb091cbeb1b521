"""The domains' system-call filter, run through a classic-BPF interpreter."""

from __future__ import annotations

import errno
import struct

import pytest

from pyqrexec.host import seccomp
from pyqrexec.host.confine import boot_argv, confine_args

ALLOW = seccomp.RET_ALLOW


def run(program: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """The filter's verdict for one system call (the subset of cBPF `build` emits)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    code = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        if op == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
        elif op == 0x54:
            acc &= k
        elif op in (0x15, 0x35, 0x45):
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
            pc += jt if hit else jf
        elif op == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


@pytest.mark.parametrize("arch", list(seccomp.ARCHES.values()), ids=lambda a: a.name)
def test_filter(arch: seccomp.Arch) -> None:
    prog = seccomp.build(arch)
    n = arch.numbers
    eperm = seccomp.RET_ERRNO | errno.EPERM
    enosys = seccomp.RET_ERRNO | errno.ENOSYS
    for name in ("open_by_handle_at", "keyctl", "mount", "unshare", "setns", "ptrace",
                 "bpf", "io_uring_setup", "userfaultfd", "kexec_load", "init_module"):
        assert run(prog, arch.audit, n[name]) == eperm, name
    for name in ("clone3", "fsopen", "open_tree"):
        assert run(prog, arch.audit, n[name]) == enosys, name
    # ordinary calls pass: read(0 on both), write, clone for fork and threads
    assert run(prog, arch.audit, 0) == ALLOW
    assert run(prog, arch.audit, n["clone"], (0x01200011,)) == ALLOW  # fork()
    assert run(prog, arch.audit, n["clone"], (0x10000000 | 17,)) == eperm  # CLONE_NEWUSER
    assert run(prog, arch.audit, n["ioctl"], (0, 0x5412)) == eperm  # TIOCSTI
    assert run(prog, arch.audit, n["ioctl"], (0, 0x1_0000_5412)) == eperm  # high bits ignored
    assert run(prog, arch.audit, n["ioctl"], (0, 0x5401)) == ALLOW  # TCGETS
    assert run(prog, arch.audit, n["socket"], (1,)) == ALLOW  # AF_UNIX
    assert run(prog, arch.audit, n["socket"], (17,)) == seccomp.RET_ERRNO | errno.EAFNOSUPPORT
    assert run(prog, arch.audit, n["personality"], (0xFFFFFFFF,)) == ALLOW
    assert run(prog, arch.audit, n["personality"], (0x0040000,)) == eperm  # ADDR_NO_RANDOMIZE
    # another ABI on the same machine gets nothing through
    assert run(prog, 0x40000003, 11) == enosys  # i386 execve
    if arch.x32_bit:
        assert run(prog, arch.audit, 0x40000000 | 59) == enosys


def test_confine_command_line() -> None:
    argv = boot_argv("/usr/bin/python3", "/opt/src")
    assert argv[:4] == ["/usr/bin/python3", "-I", "-S", "-c"] and "'/opt/src'" in argv[4]
    assert confine_args((0x70010000, 65536), ["CAP_SETUID", "CAP_KILL"], "nobody",
                        target=42) == [
        "--target=42", f"--map={0x70010000}:65536", "--caps=CAP_SETUID,CAP_KILL",
        "--user=nobody", "--"]
    assert confine_args(None, [], "root") == ["--caps=", "--"]
