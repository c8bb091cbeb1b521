"""How a domain's processes are confined: bubblewrap argv (pure) and the plain fallback.

Inside a bubblewrap sandbox a domain sees (docs/qrexec-host.md):

- the host's `/usr` (read-only; `/bin`, `/lib`… as on the host), the Python running
  qrexec-host and the pyqrexec sources, at their host paths;
- `/etc` (and `/usr/bin`, `/usr/local/etc`, … when its root has them) as a *merged
  directory*: a directory of symlinks built on the host, the domain root's entries winning
  over the host's, the host's own directory shown at `/run/host/<dir>`; of the host's
  `/etc` only the allow-listed entries of `HOST_ETC` (libraries, certificates, time zone…),
  with the domain's own `passwd`, `group`, `hostname` and `hosts` (`domain_accounts`);
- `/root` and `/home` of its own (`homes`), owned by the domain's users;
- its root directory read-only at `/run/qubes-root` (what the merged symlinks point into);
- `/run/qubes` = its run directory (agent trigger socket `/var/run/qubes/qrexec-agent`);
- `/run/vchan` = its vchan view: its own directory plus one directory per peer domain
  (`VCHAN_PAIR_DIRS`, transport/vchan.py), each shared by exactly the two domains of a pair;
- private `/tmp`, `/proc`, `/dev`, PID, network, IPC and UTS namespaces.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyqrexec

__all__ = [
    "Account",
    "HOST_ETC",
    "domain_accounts",
    "etc_files",
    "SandboxSpec",
    "KEPT_CAPS",
    "HostLayout",
    "MERGED_DIRS",
    "SANDBOX_ROOT",
    "SANDBOX_RUN",
    "SANDBOX_VCHAN",
    "bwrap_argv",
    "host_layout",
    "build_merged_dir",
    "merged_dirs",
    "probe_bwrap",
    "source_dir",
    "python_dirs",
    "user_wrapper",
]

#: directories of a domain root that replace the host's inside the sandbox ("etc" always)
MERGED_DIRS = ("etc", "usr/bin", "usr/local/bin", "usr/local/etc", "usr/lib/qubes")
SANDBOX_ROOT = "/run/qubes-root"
SANDBOX_RUN = "/run/qubes"
SANDBOX_VCHAN = "/run/vchan"
#: what a root agent keeps (bwrap started by root would keep almost everything, including
#: CAP_SYS_ADMIN, CAP_MKNOD and CAP_DAC_READ_SEARCH, each a way out): switching to the
#: requested user per call, and root's usual power over the files it can see
KEPT_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER",
             "CAP_KILL")
_HOST_ONLY = ("qubes-rpc", "qubes")
#: the host's /etc entries a domain sees: what programs need to run (dynamic linker,
#: certificates, locales, time zone, name service switch), never the host's accounts,
#: secrets or service configuration
HOST_ETC = (
    "alternatives", "bash.bashrc", "ca-certificates", "ca-certificates.conf",
    "debian_version", "environment", "fonts", "gai.conf", "host.conf", "inputrc",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "locale.alias", "locale.conf", "locale.gen",
    "localtime", "login.defs", "lsb-release", "magic", "mime.types", "networks",
    "nsswitch.conf", "os-release", "profile", "profile.d", "protocols", "python3",
    "resolv.conf", "rpc", "services", "shells", "skel", "ssl", "terminfo", "timezone", "xdg",
)
_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True)
class HostLayout:
    """What of the host's `/` a sandbox needs: top-level symlinks and directories."""

    links: tuple[tuple[str, str], ...] = ()
    dirs: tuple[str, ...] = ("/usr",)
    #: Python installation and pyqrexec source directories outside /usr, bound read-only
    extra_ro: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxSpec:
    name: str
    root: Path
    run_dir: Path
    vchan_view: Path
    #: (host pair directory, peer domid): shown at /run/vchan/<peer>
    pairs: tuple[tuple[Path, int], ...] = ()
    #: (directory relative to /, host merged directory)
    merged: tuple[tuple[str, Path], ...] = ()
    info_fd: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: (host directory, path inside) bound writable: the users' home directories
    homes: tuple[tuple[Path, str], ...] = ()


def bwrap_argv(spec: SandboxSpec, layout: HostLayout, command: Sequence[str],
               bwrap: str = "bwrap") -> list[str]:
    """The full bwrap command line that runs `command` confined as `spec` says."""
    a = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
         "--hostname", spec.name, "--die-with-parent", "--new-session", "--clearenv",
         "--cap-drop", "ALL"]
    for cap in KEPT_CAPS:
        a += ["--cap-add", cap]
    for key, value in sorted(spec.env.items()):
        a += ["--setenv", key, value]
    for d in layout.dirs:
        a += ["--ro-bind", d, d]
    for link, target in layout.links:
        a += ["--symlink", target, link]
    # /tmp and /var/tmp as on any Linux system: everyone may write, sticky (a non-root agent
    # and the users a root agent switches to need them; bwrap's default mode is 0755)
    a += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp",
          "--tmpfs", "/run", "--dir", "/var", "--symlink", "/run", "/var/run",
          "--perms", "1777", "--tmpfs", "/var/tmp"]
    made = {"/", "/run", "/tmp", "/var"}
    # the homes first: the Python and pyqrexec directories may lie below /root and must be
    # mounted over them, not hidden by them
    for home, inside in spec.homes:
        a += ["--bind", str(home), inside]
        made.add(inside)
    for d in layout.extra_ro:
        a += [*_parents(d, made), "--ro-bind", d, d]
    a += ["--ro-bind", str(spec.root), SANDBOX_ROOT,
          "--bind", str(spec.run_dir), SANDBOX_RUN,
          "--bind", str(spec.vchan_view), SANDBOX_VCHAN]
    for pair, peer in spec.pairs:
        # -try: a peer that is being killed meanwhile takes its pair directory with it
        a += ["--bind-try", str(pair), f"{SANDBOX_VCHAN}/{peer}"]
    for rel, merged in spec.merged:
        host = f"/{rel}"
        if rel == "etc":
            a += _parents("/run/host/etc/x", made)
            for name in HOST_ETC:
                a += ["--ro-bind-try", f"/etc/{name}", f"/run/host/etc/{name}"]
        else:
            a += [*_parents(f"/run/host/{rel}", made), "--ro-bind-try", host,
                  f"/run/host/{rel}"]
        a += ["--ro-bind", str(merged), host]
    if spec.info_fd is not None:
        a += ["--info-fd", str(spec.info_fd)]
    a += ["--chdir", "/", "--", *command]
    return a


def _parents(path: str, made: set[str]) -> list[str]:
    """Options creating the missing parents of `path` with mode 0755 (bwrap would make
    them 0700, and an unprivileged agent must traverse them)."""
    a: list[str] = []
    for parent in reversed(Path(path).parents):
        if str(parent) not in made:
            made.add(str(parent))
            a += ["--perms", "0755", "--dir", str(parent)]
    return a


def merged_dirs(root: Path) -> list[str]:
    """Which of `MERGED_DIRS` a domain with this root gets (impure: looks at the disk):
    `/etc` always, `/usr/bin` always (it holds qrexec's programs), others when both the
    host and the root have them."""
    return [rel for rel in MERGED_DIRS
            if rel == "etc" or (Path(f"/{rel}").is_dir()
                                and (rel == "usr/bin" or (root / rel).is_dir()))]


def build_merged_dir(dest: Path, rel: str, root: Path,
                     programs: Mapping[str, str] | None = None,
                     files: Mapping[str, str] | None = None) -> None:
    """Fill `dest` with symlinks: host `/rel/X` -> `/run/host/rel/X` (for `/etc` only the
    `HOST_ETC` entries), then `programs` (name -> script text, written as executables) and
    `files` (name -> text), then the root's own `rel/X` -> `/run/qubes-root/rel/X`; a later
    entry replaces an earlier one of the same name, so a root bringing its own
    qrexec-client-vm (upstream's, say) or its own passwd keeps it."""
    dest.mkdir(parents=True, exist_ok=True)
    host = Path(f"/{rel}")
    entries: dict[str, str] = {}
    if host.is_dir():
        for name in os.listdir(host):
            if rel.endswith("etc") and name in _HOST_ONLY:
                continue  # the host's own qrexec configuration is not the domain's
            if rel == "etc" and name not in HOST_ETC:
                continue
            entries[name] = f"/run/host/{rel}/{name}"
    written = {name: (text, 0o755) for name, text in (programs or {}).items()}
    written.update({name: (text, 0o644) for name, text in (files or {}).items()})
    for name in written:
        entries.pop(name, None)
    if rel.endswith("etc"):
        # qrexec's own configuration is always the root's, even before it exists: a
        # service directory the administrator adds to a running domain's root is then
        # seen at once (the link resolves through the live root), not at the next start
        for name in _HOST_ONLY:
            entries[name] = f"{SANDBOX_ROOT}/{rel}/{name}"
    own = root / rel
    if own.is_dir():
        for name in os.listdir(own):
            entries[name] = f"{SANDBOX_ROOT}/{rel}/{name}"
            written.pop(name, None)
    for name, target in entries.items():
        os.symlink(target, dest / name)
    for name, (text, mode) in written.items():
        (dest / name).write_text(text)
        os.chmod(dest / name, mode)
    os.chmod(dest, 0o755)


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    group: str
    home: str


def domain_accounts(wanted: Sequence[str], host_lookup: Mapping[str, tuple[int, int, str]]
                    ) -> list[Account]:
    """The accounts of a domain: root, `user` (1000, as in a Qubes qube), nobody, and each
    name in `wanted` (the agent's and the daemon's default user) with its host uid and
    primary group when those are free and below 65534, else the next free id from 1001.

    `host_lookup`: name -> (uid, gid, group name) of the host accounts among `wanted`."""
    accounts = [Account("root", 0, 0, "root", "/root"),
                Account("user", 1000, 1000, "user", "/home/user"),
                Account("nobody", 65534, 65534, "nogroup", "/nonexistent")]
    for name in wanted:
        if not name or any(a.name == name for a in accounts):
            continue
        taken = {a.uid for a in accounts} | {a.gid for a in accounts}
        uid, gid, group = host_lookup.get(name, (-1, -1, name))
        if not 0 < uid < 65534 or uid in taken or not 0 < gid < 65534 or gid in taken:
            uid = gid = next(n for n in range(1001, 65534) if n not in taken)
            group = name
        accounts.append(Account(name, uid, gid, group, f"/home/{name}"))
    return accounts


def etc_files(name: str, accounts: Sequence[Account], shell: str = "/bin/sh"
              ) -> dict[str, str]:
    """The generated entries of a domain's /etc."""
    passwd = "".join(f"{a.name}:x:{a.uid}:{a.gid}:{a.name}:{a.home}:"
                     f"{'/usr/sbin/nologin' if a.name == 'nobody' else shell}\n"
                     for a in accounts)
    groups: dict[int, str] = {}
    for a in accounts:
        groups.setdefault(a.gid, a.group)
    group = "".join(f"{g}:x:{gid}:\n" for gid, g in groups.items())
    hosts = f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost\n"
    return {"passwd": passwd, "group": group, "hostname": f"{name}\n", "hosts": hosts}


def source_dir() -> str:
    """The directory holding the `pyqrexec` package (put on PYTHONPATH in sandboxes)."""
    return str(Path(pyqrexec.__file__).resolve().parents[1])


def python_dirs() -> list[str]:
    """Directories a sandbox needs to run this Python and pyqrexec, outside /usr."""
    found: list[str] = []
    exe = Path(sys.executable).resolve()
    for d in (sys.base_prefix, sys.prefix, str(exe.parent.parent), source_dir()):
        real = str(Path(d).resolve())
        if real == "/" or real.startswith(("/usr/", "/proc")) or real == "/usr":
            continue
        if not any(real == f or real.startswith(f + "/") for f in found):
            found = [f for f in found if not f.startswith(real + "/")] + [real]
    return found


def host_layout() -> HostLayout:
    links: list[tuple[str, str]] = []
    dirs = ["/usr"]
    for name in _TOP_LEVEL:
        p = Path("/") / name
        if p.is_symlink():
            links.append((str(p), os.readlink(p)))
        elif p.is_dir():
            dirs.append(str(p))
    return HostLayout(tuple(links), tuple(dirs), tuple(python_dirs()))


def user_wrapper(user: str | None, die_with_parent: bool = False) -> list[str]:
    """argv prefix that runs a program as `user` (none for root / no user), with the
    account's primary group (which need not share its name, e.g. nobody/nogroup).

    `die_with_parent`: the program is started with a parent-death signal that must outlive
    the switch (changing user IDs clears it, prctl(2)); setpriv sets SIGKILL again after it.
    setpriv does not check that its parent is still there then: a parent that ends within
    those few system calls goes unnoticed.
    """
    if not user or user == "root":
        return []
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        group = user
    else:
        if entry.pw_uid == os.geteuid() and os.geteuid() != 0:
            # already that user (qrexec-host run by an ordinary user): nothing to switch, and
            # setpriv could not set groups without privileges anyway
            return []
        group = str(entry.pw_gid)
    again = ["--pdeathsig=KILL"] if die_with_parent else []
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", *again, "--"]


def probe_bwrap() -> tuple[str | None, str]:
    """(bwrap path, "") when bubblewrap can make our sandboxes here, else (None, reason)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, "bwrap (Debian package bubblewrap) is not installed"
    layout = host_layout()
    argv = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent", "--new-session"]
    for d in layout.dirs:
        argv += ["--ro-bind", d, d]
    for link, target in layout.links:
        argv += ["--symlink", target, link]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/run", "--", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"bwrap cannot run: {err}"
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        return None, f"bwrap refuses to create namespaces here: {why}"
    return bwrap, ""
