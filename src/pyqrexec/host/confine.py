"""The last step into a domain: its own user namespace, its capabilities, its filter.

Every process qrexec-host puts into a bubblewrap domain goes through here: the domain's
agent when the sandbox starts (bubblewrap runs this as its command), and whatever
`qrexec-host call` enters the domain with later (`--target=PID`: this runs on the host and
joins the namespaces of the sandbox whose PID 1 is PID). It is started as
`python -I -S -c BOOT` (see `boot_argv`): nothing from the working directory, the
environment or site directories is imported, only the standard library and this module
from the pyqrexec sources.

As the host's root it never loads anything from a place a domain can write. Started by
bubblewrap, it runs in a sandbox that no domain code has touched yet; with `--target` it
imports all it needs on the host, then joins the sandbox's namespaces and makes only system
calls until step 1 has taken the host's privileges away. Then:

0. (`--target=PID`) join the network, IPC, UTS, PID and mount namespaces of PID.
1. (`--map BASE:COUNT`) a new user namespace whose IDs 0..COUNT-1 are host IDs
   BASE..BASE+COUNT-1. A forked helper, still the host's root, writes the ID maps (a process
   cannot map other IDs than its own into a namespace it has just entered). From then on
   the process is root of the domain and nobody on the host: host-owned files count as
   "nobody", and capabilities act only on what the namespace owns.
2. The capability bounding set is cut to `--caps` (a new user namespace starts with all).
3. (`--user NAME`) the account from the *domain's* /etc/passwd, with its groups.
4. The seccomp filter (host/seccomp.py), with no_new_privs.
5. exec of the command; with `--target` in a child (joining a PID namespace takes effect
   for children only), whose exit status this process passes on.

Any failure ends the process with status 125 and one line on stderr: nothing is run
half-confined. docs/isolation.md describes the whole arrangement.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import sys
from collections.abc import Sequence

from . import seccomp

__all__ = ["boot_argv", "confine_args", "main", "CAP_NUMBERS"]

_CLONE_NEWUSER = 0x10000000
_PR_CAPBSET_DROP = 24
EXIT_FAILED = 125

#: capability numbers (linux/capability.h) of the ones a domain may keep
CAP_NUMBERS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2,
               "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6,
               "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10,
               "CAP_SYS_CHROOT": 18, "CAP_AUDIT_WRITE": 29}


def boot_argv(python: str, source: str) -> list[str]:
    """argv prefix running `main` with `python` and the pyqrexec sources at `source`."""
    code = (f"import sys; sys.path.insert(0, {source!r}); "
            "from pyqrexec.host.confine import main; main()")
    return [python, "-I", "-S", "-c", code]


def confine_args(uid_map: tuple[int, int] | None, caps: Sequence[str], user: str | None,
                 target: int | None = None) -> list[str]:
    """The options of `main` for one confinement, ending with `--`."""
    out: list[str] = [] if target is None else [f"--target={target}"]
    if uid_map is not None:
        out.append(f"--map={uid_map[0]}:{uid_map[1]}")
    out.append("--caps=" + ",".join(caps))
    if user and user != "root":
        out.append(f"--user={user}")
    return [*out, "--"]


class _Failed(Exception):
    pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise _Failed(f"{what}: {os.strerror(code)}")


#: namespaces joined with --target, the mount namespace last (it changes what paths mean)
_JOINED = (("net", 0x40000000), ("ipc", 0x08000000), ("uts", 0x04000000),
           ("pid", 0x20000000), ("mnt", 0x00020000))


def _open_namespaces(target: int) -> list[tuple[int, int]]:
    fds = []
    for name, kind in _JOINED:
        fds.append((os.open(f"/proc/{target}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), kind))
    return fds


def _join(namespaces: list[tuple[int, int]]) -> None:
    libc = _libc()
    for fd, kind in namespaces:
        _check(libc.setns(fd, kind), "setns")
        os.close(fd)
    os.chdir("/")  # the sandbox's root, which joining its mount namespace made ours


def _new_user_namespace(base: int, count: int,
                        namespaces: list[tuple[int, int]] | None = None) -> None:
    me = os.getpid()
    ready_r, ready_w = os.pipe()
    helper = os.fork()
    if helper == 0:  # still the host's root, outside the new namespace (and on the host)
        status = 1
        try:
            os.close(ready_w)
            if os.read(ready_r, 1) == b"1":
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{me}/{name}", "w") as f:
                        f.write(f"0 {base} {count}\n")
                status = 0
        finally:
            os._exit(status)
    os.close(ready_r)
    libc = _libc()
    try:
        if namespaces:
            _join(namespaces)
        _check(libc.unshare(_CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    finally:
        os.write(ready_w, b"1")
        os.close(ready_w)
    _, status = os.waitpid(helper, 0)
    if status != 0:
        raise _Failed(f"cannot map IDs {base}..{base + count - 1} into the domain")
    os.setresgid(0, 0, 0)
    os.setgroups([])
    os.setresuid(0, 0, 0)


def _limit_capabilities(keep: set[int]) -> None:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        # without CAP_SETPCAP (EPERM: an unprivileged host) the set is bwrap's already
        if (cap not in keep and seccomp.prctl(_PR_CAPBSET_DROP, cap) != 0
                and ctypes.get_errno() != 1):
            raise _Failed(f"cannot drop capability {cap}")


def _become(user: str) -> None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise _Failed(f"no account {user!r} in the domain") from None
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = entry.pw_name


def _run(argv: list[str]) -> None:
    options: dict[str, str] = {}
    while argv and argv[0] != "--":
        key, _, value = argv.pop(0).partition("=")
        options[key] = value
    command = argv[1:]
    if not command:
        raise _Failed("usage: confine [--map=BASE:COUNT] [--caps=LIST] [--user=NAME] "
                      "-- COMMAND...")
    arch = seccomp.native_arch()
    if arch is None:
        raise _Failed(f"no system-call filter for {os.uname().machine}: refusing to run "
                      "unfiltered")
    program = seccomp.build(arch)
    namespaces = _open_namespaces(int(options["--target"])) if "--target" in options else []
    if "--map" in options:
        base, _, count = options["--map"].partition(":")
        _new_user_namespace(int(base), int(count), namespaces)
    elif namespaces:
        _join(namespaces)
    caps = {CAP_NUMBERS[c] for c in options.get("--caps", "").split(",") if c}
    _limit_capabilities(caps)
    if options.get("--user") not in (None, "", "root"):
        _become(options["--user"])
    if namespaces:
        _run_child(program, command)
    seccomp.install(program)
    try:
        os.execvp(command[0], command)
    except OSError as err:
        raise _Failed(f"{command[0]}: {err.strerror}") from None


def _run_child(program: bytes, command: list[str]) -> None:
    """Run `command` in a child, inside the joined PID namespace; end with its status."""
    child = os.fork()
    if child == 0:
        try:
            seccomp.install(program)
            os.execvp(command[0], command)
        except OSError as err:
            print(f"qrexec-host: {command[0]}: {err.strerror}", file=sys.stderr)
        os._exit(127)
    # the terminal's signals reach the child too (same process group): only it decides
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGTERM))
    signal.signal(signal.SIGHUP, lambda *_: os.kill(child, signal.SIGHUP))
    while True:
        _, status = os.waitpid(child, 0)
        if os.WIFEXITED(status):
            os._exit(os.WEXITSTATUS(status))
        if os.WIFSIGNALED(status):
            os._exit(128 + os.WTERMSIG(status))


def main() -> None:
    try:
        _run(sys.argv[1:])
    except (_Failed, OSError, ValueError, KeyError) as err:
        print(f"qrexec-host: cannot enter the domain: {err}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(EXIT_FAILED)
