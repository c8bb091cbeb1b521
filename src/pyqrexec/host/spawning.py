"""What it takes to run a domain's processes on this host: its directories in the state
directory, its environments, its sandbox (bubblewrap mode) or plain process, its accounts,
homes and uid range; starting its agent and daemon, and entering it later (`exec_spec`).

The manager decides when a domain starts and stops (host/manager.py); this module, how."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import grp
import os
import pwd
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..qubesd.server import HostError
from .config import UID_RANGE, HostConfig
from .confine import boot_argv, confine_args
from .domain import Domain
from .launchers import domain_programs, program, write_program
from .paths import Paths, give, make_dir
from .processes import read_info, spawn
from .relays import REMOTE_DIR_VARIABLE, write_remote_entries
from .sandbox import (
    KEPT_CAPS,
    SANDBOX_RUN,
    SANDBOX_VCHAN,
    Account,
    SandboxSpec,
    build_merged_dir,
    bwrap_argv,
    domain_accounts,
    etc_files,
    host_layout,
    merged_dirs,
    source_dir,
    user_wrapper,
)

__all__ = ["Spawner", "unprivileged_accounts"]

#: the accounts' shell in a domain, as in a Qubes qube (bash), where the host has it
_LOGIN_SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"


class Spawner:
    """Starts and enters domains the way this host runs them: in bubblewrap sandboxes when
    `bwrap` is given, as plain processes otherwise."""

    def __init__(self, paths: Paths, base_env: Mapping[str, str], bwrap: str | None,
                 uid_base: int) -> None:
        self.paths = paths
        self.base_env = base_env
        self.bwrap = bwrap
        self.layout = host_layout() if bwrap else None
        #: whether domains get user namespaces of their own (needs the host's root)
        self.userns = bwrap is not None and os.geteuid() == 0
        #: the host's `uid_base`: a reload cannot change it (host/reload.py)
        self.uid_base = uid_base

    # -- starting ---------------------------------------------------------------------------
    def free_uid_base(self, domains: Iterable[Domain]) -> int:
        """The lowest uid range no running domain holds: a range is reused only once the
        domain that had it is gone, processes and files (its directories are removed)."""
        used = {d.uid_base for d in domains if d.uid_base is not None}
        for slot in range(1, (2**31 - self.uid_base) // UID_RANGE):
            base = self.uid_base + slot * UID_RANGE
            if base not in used:
                return base
        raise HostError("QubesException", "no free uid range for another domain")

    def make_dirs(self, d: Domain, domains: Iterable[Domain]
                  ) -> tuple[Path, Path, list[tuple[Path, int]]]:
        """`d`'s vchan view and its pair directories with the running `domains`, its home
        and run directories: (home, view, the pairs bound into its sandbox). Every directory
        is made by descriptor in a host-owned parent that no domain can write
        (docs/isolation.md): a domain cannot pre-empt or redirect them."""
        p = self.paths
        domid = d.domid
        assert domid is not None
        others = list(domains)
        view = p.vchan / str(domid)
        # the view itself is the host's: the domain writes only inside its pair directories
        make_dir(p.vchan, str(domid), 0o755)
        pairs: list[tuple[Path, int]] = []
        for peer in others:
            if peer is d or peer.domid is None or peer.state == "Dying" or not (
                    p.vchan / str(peer.domid)).is_dir():
                continue
            # both domains of the pair (each with its own uids) create sockets here
            pair = make_dir(p.vchan / str(peer.domid), str(domid), 0o777)
            if self.bwrap:
                make_dir(view, str(peer.domid), 0o755)  # the mount point
                pairs.append((pair, peer.domid))
                d.pairs.append((pair, peer.domid))
            else:
                os.symlink(pair, view / str(peer.domid))
        home = p.state / "dom" / d.name
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        agent_account = self._account(d, d.cfg.user or "root")
        run = make_dir(home, "run", 0o755, *self._host_ids(d, agent_account))
        if d.cfg.user and not self.bwrap:
            give(run, d.cfg.user)
        write_remote_entries(run, d.name, (o.cfg for o in others))
        return home, view, pairs

    async def start_agent(self, d: Domain, home: Path, view: Path,
                          pairs: list[tuple[Path, int]], log: Path
                          ) -> tuple[asyncio.subprocess.Process, int | None]:
        """`d`'s qrexec-agent, in `d`'s cgroup if it has one, and the host pid of its
        sandbox's PID 1 (None as a plain process)."""
        if self.bwrap:
            return await self._spawn_sandboxed(d, home, view, pairs, log)
        run = home / "run"
        (home / "bin").mkdir()
        for name, text in domain_programs(str(run / "qrexec-agent")).items():
            write_program(home / "bin" / name, text)
        agent = await spawn(
            [*user_wrapper(d.cfg.user, die_with_parent=True), *program("qrexec-agent"),
             f"--agent-socket={run / 'qrexec-agent'}", "--no-fork-server"],
            self._plain_env(d), log, new_session=True, cgroup=d.cgroup)
        return agent, None

    async def start_daemon(self, d: Domain, log: Path) -> asyncio.subprocess.Process:
        """`d`'s qrexec-daemon, a dom0 program."""
        p = self.paths
        return await spawn(
            [*program("qrexec-daemon"), "--direct", f"--uuid={d.cfg.uuid}",
             f"--socket-dir={p.socket_dir}", f"--policy-program={p.policy_program}",
             str(d.domid), d.name, d.cfg.default_user],
            p.dom0_env(self.base_env), log)

    async def _spawn_sandboxed(
        self, d: Domain, home: Path, view: Path, pairs: list[tuple[Path, int]], log: Path
    ) -> tuple[asyncio.subprocess.Process, int | None]:
        assert self.bwrap is not None and self.layout is not None
        merged = self._merged_dirs(d, build=True)
        rfd, wfd = os.pipe()
        spec = SandboxSpec(name=d.name, root=d.cfg.root, run_dir=home / "run",
                           vchan_view=view, pairs=tuple(pairs), merged=merged,
                           info_fd=wfd, env=self._sandbox_env(d), homes=self._homes(d, home))
        command = [*self._confine(d), *program("qrexec-agent"), "--no-fork-server"]
        try:
            proc = await spawn(bwrap_argv(spec, self.layout, command, self.bwrap),
                               self.base_env, log, pass_fds=(wfd,), cgroup=d.cgroup)
        finally:
            os.close(wfd)
        try:
            info = await asyncio.get_running_loop().run_in_executor(None, read_info, rfd)
        finally:
            os.close(rfd)
        pid = info.get("child-pid")
        return proc, pid if isinstance(pid, int) else None

    # -- accounts and homes -------------------------------------------------------------------
    def accounts(self, d: Domain) -> tuple[Account, ...]:
        """The accounts in `d`'s /etc/passwd (sandbox.domain_accounts)."""
        return _accounts_for(d.cfg.user, d.cfg.default_user)

    def _account(self, d: Domain, name: str) -> Account:
        return next(a for a in self.accounts(d) if a.name == name)

    def _host_ids(self, d: Domain, account: Account) -> tuple[int, int]:
        """Host uid and gid of `account` of `d` (-1, -1: no user namespace, leave as is)."""
        if d.uid_base is None:
            return -1, -1
        return d.uid_base + account.uid, d.uid_base + account.gid

    def _homes(self, d: Domain, home: Path) -> tuple[tuple[Path, str], ...]:
        """`/root` and `/home` of `d`, each user's directory owned by that user."""
        # 0700 as on any system, unless this host's Python lives below /root (pyenv, say):
        # then every user of the domain must pass through to run qrexec's programs
        shared = self.layout is not None and any(
            path.startswith("/root/") for path in self.layout.extra_ro)
        binds = _home_binds(home)
        (root_home, _), (homes, _) = binds
        make_dir(home, root_home.name, 0o711 if shared else 0o700,
                 *self._host_ids(d, self._account(d, "root")))
        make_dir(home, homes.name, 0o755)
        for account in self.accounts(d):
            if account.home.startswith("/home/"):
                make_dir(homes, account.home[6:], 0o700, *self._host_ids(d, account))
        return binds

    # -- environments and sandboxes -------------------------------------------------------------
    def _plain_env(self, d: Domain) -> dict[str, str]:
        r = d.cfg.root
        env = dict(self.base_env)
        run = self.paths.state / "dom" / d.name / "run"
        env.update(
            PYTHONPATH=source_dir(), VCHAN_DOMAIN=str(d.domid),
            VCHAN_SOCKET_DIR=str(self.paths.vchan / str(d.domid)), VCHAN_PAIR_DIRS="1",
            QREXEC_SERVICE_PATH=(f"{run}/rpc:{r}/usr/local/etc/qubes-rpc:{r}/etc/qubes-rpc"),
            QUBES_RPC_CONFIG_PATH=(f"{run}/rpc-config:{r}/usr/local/etc/qubes/rpc-config:"
                                   f"{r}/etc/qubes/rpc-config"),
            # the domain's own programs come first, then qrexec's, as in a sandbox's /usr/bin
            PATH=(f"{r}/usr/local/bin:{r}/usr/bin:{self.paths.state / 'dom' / d.name / 'bin'}:"
                  + self.base_env.get("PATH", "/usr/bin:/bin")),
            **{REMOTE_DIR_VARIABLE: str(run / "remote")},
        )
        for key in ("QUBESD_SOCKET", "QUBESD_INTERNAL_SOCKET", "QREXEC_POLICY_SOCKET"):
            env.pop(key, None)
        return env

    def _sandbox_env(self, d: Domain) -> dict[str, str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
               "PYTHONPATH": source_dir(), "VCHAN_DOMAIN": str(d.domid),
               "VCHAN_SOCKET_DIR": SANDBOX_VCHAN, "VCHAN_PAIR_DIRS": "1",
               "HOME": self._account(d, d.cfg.user or "root").home}
        for key in ("LANG", "LC_ALL", "TERM", "QREXEC_MAX_PROTOCOL_VERSION"):
            if key in self.base_env:
                env[key] = self.base_env[key]
        return env

    def _merged_dirs(self, d: Domain, build: bool) -> tuple[tuple[str, Path], ...]:
        """`d`'s merged directories, made first when `build`. A root without its own usr/bin
        shares one host /usr/bin with qrexec's launchers: made once, not at every start of a
        disposable (a thousand symlinks cost tens of milliseconds)."""
        home = self.paths.state / "dom" / d.name
        programs = domain_programs(f"{SANDBOX_RUN}/qrexec-agent")
        merged = []
        for rel in merged_dirs(d.cfg.root):
            shared = rel == "usr/bin" and not (d.cfg.root / rel).is_dir()
            dest = (self.paths.state / "bin" / "usr_bin" if shared
                    else home / "merged" / rel.replace("/", "_"))
            if build and not shared:
                files = (etc_files(d.name, self.accounts(d), _LOGIN_SHELL) if rel == "etc"
                         else {})
                build_merged_dir(dest, rel, d.cfg.root, programs if rel == "usr/bin" else {},
                                 files)
            elif build and not dest.is_dir():
                # complete or absent: a start that failed half-way must not leave half of it
                partial = dest.with_name(dest.name + ".new")
                shutil.rmtree(partial, ignore_errors=True)
                build_merged_dir(partial, rel, d.cfg.root, programs)
                os.rename(partial, dest)
            merged.append((rel, dest))
        return tuple(merged)

    def _confine(self, d: Domain, target: int | None = None) -> list[str]:
        """argv prefix taking a process started in `d`'s namespaces (or, with `target`, on
        the host, joining those of the sandbox whose PID 1 that is) the rest of the way:
        `d`'s user namespace and ids, the agent's capabilities and account, the filter."""
        uid_map = (d.uid_base, UID_RANGE) if d.uid_base is not None else None
        return [*boot_argv(sys.executable, source_dir()),
                *confine_args(uid_map, KEPT_CAPS, d.cfg.user, target=target)]

    def _sibling_sandbox(self, d: Domain, domains: Iterable[Domain]) -> list[str]:
        """bwrap argv prefix for a new process with `d`'s view of the world.

        Unprivileged, nsenter cannot join the namespaces bwrap made under its user namespace;
        a sibling sandbox with the same mounts sees the same root, trigger socket and vchan
        directories (pair directories of domains started later appear in the shared view).
        """
        assert self.bwrap is not None and self.layout is not None and d.domid is not None
        home = self.paths.state / "dom" / d.name
        view = self.paths.vchan / str(d.domid)
        # the pairs with domains older than `d` (in their views); those with domains
        # started later are directories of `d`'s own view, shown with it: binding the later
        # peer's mount point over one would hide it (a data socket made there reaches nobody)
        running = {peer.domid for peer in domains if peer.domid is not None}
        pairs = [(pair, peer) for pair, peer in d.pairs if peer in running and pair.is_dir()]
        merged = self._merged_dirs(d, build=False)
        spec = SandboxSpec(name=d.name, root=d.cfg.root, run_dir=home / "run",
                           vchan_view=view, pairs=tuple(pairs), merged=merged,
                           env=self._sandbox_env(d),
                           homes=_home_binds(home))
        return bwrap_argv(spec, self.layout, self._confine(d), self.bwrap)

    # -- entering a running domain ----------------------------------------------------------------
    def exec_spec(self, d: Domain, domains: Iterable[Domain]) -> dict[str, object]:
        """How `call` runs a program inside `d` (one of `domains`): argv prefix, environment,
        agent socket.

        dom0 is this host itself: its programs run directly, with dom0's environment (the
        policy tools find dom0's policy and services through it), and it has no agent.
        """
        if d.name == "dom0":
            return {"prefix": [], "env": self.paths.dom0_env(self.base_env)}
        if not d.running:
            raise HostError("QubesVMNotStartedError", f"Domain is powered off: {d.name}")
        # the program is the domain's: bounded by its limits like the rest of it
        cgroup = d.cgroup.procs_files if d.cgroup is not None else []
        if self.bwrap:
            if d.ns_pid is None:
                raise HostError("QubesException", f"cannot enter {d.name}'s sandbox")
            if os.geteuid() == 0:
                # confine.py joins the sandbox from the host and becomes the domain's
                # agent there before it touches any path of the domain
                prefix = self._confine(d, target=d.ns_pid)
            else:
                prefix = self._sibling_sandbox(d, domains)
            return {"prefix": prefix, "env": self._sandbox_env(d),
                    "agent_socket": f"{SANDBOX_RUN}/qrexec-agent", "cgroup": cgroup}
        run = self.paths.state / "dom" / d.name / "run"
        return {"prefix": user_wrapper(d.cfg.user), "env": self._plain_env(d),
                "agent_socket": str(run / "qrexec-agent"), "root": str(d.cfg.root),
                "cgroup": cgroup}


def unprivileged_accounts(config: HostConfig, log: Callable[[str], None]) -> HostConfig:
    """The config as a host without root can serve it: every agent runs as the account
    running `up` (nothing can switch to another), so that account is each domain's `user`
    in effect and its default user; a file asking for another account is told once."""
    if os.geteuid() == 0:
        return config
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = str(os.geteuid())
    domains = dict(config.domains)
    for name, c in config.domains.items():
        if name == "dom0":
            continue
        if c.user not in (None, me):
            log(f"{name}: user = {c.user!r} ignored: without root every domain runs as {me}")
        elif c.default_user not in ("root", me):
            log(f"{name}: default_user = {c.default_user!r} ignored: without root every "
                f"domain runs as {me}")
        domains[name] = dataclasses.replace(c, user=None, default_user=me)
    return dataclasses.replace(config, domains=domains)


@functools.lru_cache(maxsize=256)
def _accounts_for(user: str | None, default_user: str | None) -> tuple[Account, ...]:
    """The accounts of a domain with these config keys, with the host's ids of the named
    ones (looked up once: a domain's start asks for them several times)."""
    wanted = [n for n in (user, default_user) if n]
    found: dict[str, tuple[int, int, str]] = {}
    for name in wanted:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        try:
            group = grp.getgrgid(entry.pw_gid).gr_name
        except KeyError:
            group = name
        found[name] = (entry.pw_uid, entry.pw_gid, group)
    return tuple(domain_accounts(wanted, found))


def _home_binds(home: Path) -> tuple[tuple[Path, str], tuple[Path, str]]:
    """Where a domain's homes live on the host (under its `STATE/dom/NAME`) and inside."""
    return (home / "root-home", "/root"), (home / "home", "/home")
