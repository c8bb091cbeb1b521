"""The system-call filter every sandboxed domain runs under (docs/isolation.md).

A domain's processes are root only in their own user namespace, so most dangerous system
calls already fail for want of a capability. The filter is the second wall, for the kernel
interfaces that user namespaces open up to unprivileged code (new mount API, keyrings,
BPF, io_uring, userfaultfd) and for the few that work without any privilege but reach
outside the domain (`TIOCSTI` typing into the terminal of whoever runs `qrexec-host call`,
`ptrace` and `process_vm_*` on a process entering the domain).

It is at least as strict as Flatpak's default: the same denials, plus the file-handle calls,
module and kexec loading, BPF, io_uring, userfaultfd and clock setting. Denied calls fail
with `EPERM` (the new mount API and `clone3` with `ENOSYS`, so that C libraries fall back to
what the filter can inspect); socket families other than Unix, IPv4, IPv6 and netlink fail
with `EAFNOSUPPORT`; any other ABI (i386 through `int 0x80`, x32) fails with `ENOSYS`.

`build()` is pure (a classic-BPF program as bytes, tested by an interpreter in the unit
tests); `install()` loads it into the calling process.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

__all__ = ["Arch", "ARCHES", "native_arch", "build", "install", "DENIED", "UNSUPPORTED",
           "ALLOWED_FAMILIES", "NAMESPACE_FLAGS", "DENIED_IOCTLS", "ALLOWED_PERSONALITIES",
           "prctl"]

# classic BPF opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_AND_K = 0x54
_RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
_X32_BIT = 0x40000000

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR = 0
_ARCH = 4


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of argument `index` (little-endian ABIs only)."""
    return 16 + 8 * index


@dataclass(frozen=True)
class Arch:
    name: str
    audit: int
    numbers: dict[str, int]
    #: the ABI shares the number space with a second one flagged by a bit (x86_64's x32)
    x32_bit: bool = False


# numbers from the kernel's uapi headers (asm/unistd_64.h; asm-generic/unistd.h for arm64)
_X86_64 = {
    "syslog": 103, "uselib": 134, "acct": 163, "modify_ldt": 154, "quotactl": 179,
    "quotactl_fd": 443, "add_key": 248, "keyctl": 250, "request_key": 249,
    "move_pages": 279, "mbind": 237, "get_mempolicy": 239, "set_mempolicy": 238,
    "set_mempolicy_home_node": 450, "migrate_pages": 256, "unshare": 272, "setns": 308,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "clone": 56,
    "clone3": 435, "ioctl": 16, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "perf_event_open": 298, "personality": 135, "ptrace": 101, "open_by_handle_at": 304,
    "name_to_handle_at": 303, "kexec_load": 246, "kexec_file_load": 320,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "bpf": 321,
    "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "lookup_dcookie": 212, "swapon": 167, "swapoff": 168,
    "reboot": 169, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305,
    "adjtimex": 159, "iopl": 172, "ioperm": 173, "process_vm_readv": 310,
    "process_vm_writev": 311, "nfsservctl": 180, "fanotify_init": 300, "socket": 41,
}
_GENERIC = {
    "syslog": 116, "acct": 89, "quotactl": 60, "quotactl_fd": 443, "add_key": 217,
    "keyctl": 219, "request_key": 218, "move_pages": 239, "mbind": 235,
    "get_mempolicy": 236, "set_mempolicy": 237, "set_mempolicy_home_node": 450,
    "migrate_pages": 238, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
    "pivot_root": 41, "chroot": 51, "clone": 220, "clone3": 435, "ioctl": 29,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "perf_event_open": 241, "personality": 92,
    "ptrace": 117, "open_by_handle_at": 265, "name_to_handle_at": 264, "kexec_load": 104,
    "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106,
    "bpf": 280, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "lookup_dcookie": 18, "swapon": 224, "swapoff": 225,
    "reboot": 142, "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266,
    "adjtimex": 171, "process_vm_readv": 270, "process_vm_writev": 271, "nfsservctl": 42,
    "fanotify_init": 262, "socket": 198,
}
ARCHES = {
    "x86_64": Arch("x86_64", 0xC000003E, _X86_64, x32_bit=True),
    "aarch64": Arch("aarch64", 0xC00000B7, _GENERIC),
}

#: refused outright with EPERM (names missing from an ABI do not exist there)
DENIED = (
    "syslog", "uselib", "acct", "modify_ldt", "quotactl", "quotactl_fd", "add_key", "keyctl",
    "request_key", "move_pages", "mbind", "get_mempolicy", "set_mempolicy",
    "set_mempolicy_home_node", "migrate_pages", "unshare", "setns", "mount", "umount2",
    "pivot_root", "chroot", "perf_event_open", "ptrace", "open_by_handle_at",
    "name_to_handle_at", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "lookup_dcookie", "swapon", "swapoff", "reboot", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm", "process_vm_readv",
    "process_vm_writev", "nfsservctl", "fanotify_init",
)
#: refused with ENOSYS: callers (the C library, util-linux) then fall back to older calls
UNSUPPORTED = ("clone3", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
               "mount_setattr")
#: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 \
    | 0x20000000 | 0x40000000
#: TIOCSTI (push input into a terminal), TIOCLINUX (console selection tricks)
DENIED_IOCTLS = (0x5412, 0x541C)
#: PER_LINUX, PER_LINUX32, and the query 0xffffffff
ALLOWED_PERSONALITIES = (0x0, 0x8, 0xFFFFFFFF)
#: AF_UNSPEC, AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
ALLOWED_FAMILIES = (0, 1, 2, 10, 16)


class _Program:
    """Instructions with forward jumps to named labels, resolved at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int | str, int | str, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: int | str = 0, jf: int | str = 0) -> None:
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = b""
        for i, (code, jt, jf, k) in enumerate(self.code):
            offsets = []
            for target in (jt, jf):
                rel = self.labels[target] - i - 1 if isinstance(target, str) else target
                if not 0 <= rel <= 255:
                    raise ValueError("seccomp program: jump out of range")
                offsets.append(rel)
            out += struct.pack("<HBBI", code, offsets[0], offsets[1], k)
        return out


def build(arch: Arch) -> bytes:
    """The filter for `arch` as an array of `struct sock_filter`."""
    p = _Program()
    nums = arch.numbers
    p.op(_LD_W_ABS, _ARCH)
    p.op(_JEQ_K, arch.audit, 0, "enosys")
    p.op(_LD_W_ABS, _NR)
    if arch.x32_bit:
        p.op(_JGE_K, _X32_BIT, "enosys", 0)
    for name in DENIED:
        if name in nums:
            p.op(_JEQ_K, nums[name], "eperm", 0)
    for name in UNSUPPORTED:
        p.op(_JEQ_K, nums[name], "enosys", 0)
    p.op(_JEQ_K, nums["clone"], "clone", 0)
    p.op(_JEQ_K, nums["ioctl"], "ioctl", 0)
    p.op(_JEQ_K, nums["personality"], "personality", 0)
    p.op(_JEQ_K, nums["socket"], "socket", 0)
    p.op(_RET_K, RET_ALLOW)
    # clone(flags, ...) on both ABIs: no new namespaces (unshare and setns are denied above)
    p.label("clone")
    p.op(_LD_W_ABS, _arg_low(0))
    p.op(_JSET_K, NAMESPACE_FLAGS, "eperm", 0)
    p.op(_RET_K, RET_ALLOW)
    p.label("ioctl")
    p.op(_LD_W_ABS, _arg_low(1))
    for request in DENIED_IOCTLS:
        p.op(_JEQ_K, request, "eperm", 0)
    p.op(_RET_K, RET_ALLOW)
    p.label("personality")
    p.op(_LD_W_ABS, _arg_low(0))
    for persona in ALLOWED_PERSONALITIES:
        p.op(_JEQ_K, persona, "allow", 0)
    p.op(_RET_K, RET_ERRNO | errno.EPERM)
    p.label("socket")
    p.op(_LD_W_ABS, _arg_low(0))
    for family in ALLOWED_FAMILIES:
        p.op(_JEQ_K, family, "allow", 0)
    p.op(_RET_K, RET_ERRNO | errno.EAFNOSUPPORT)
    p.label("allow")
    p.op(_RET_K, RET_ALLOW)
    p.label("eperm")
    p.op(_RET_K, RET_ERRNO | errno.EPERM)
    p.label("enosys")
    p.op(_RET_K, RET_ERRNO | errno.ENOSYS)
    return p.assemble()


def native_arch() -> Arch | None:
    return ARCHES.get(os.uname().machine)


_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def prctl(option: int, arg2: int, arg3: int = 0) -> int:
    """prctl(2) from the C library; -1 with errno (ctypes.get_errno) on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    return int(libc.prctl(option, arg2, arg3, 0, 0))


def install(program: bytes) -> None:
    """Load `program` into this process (and everything it will start).

    no_new_privs comes first: the kernel demands it of a process without CAP_SYS_ADMIN, and
    it is right anyway: no set-user-ID program may regain what the sandbox took away.
    """
    if prctl(_PR_SET_NO_NEW_PRIVS, 1) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"PR_SET_NO_NEW_PRIVS: {os.strerror(code)}")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER,
             ctypes.cast(ctypes.pointer(prog), ctypes.c_void_p).value or 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"seccomp: {os.strerror(code)}")
