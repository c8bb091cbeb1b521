"""qrexec-host's domain manager: lifecycle, sandboxes, disposables (asyncio).

Where things live is host/paths.py; dom0's programs, host/dom0_side.py; the qubesd methods
that drive all this, host/methods.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import grp
import os
import pwd
import shutil
import signal
import sys
import uuid as uuidlib
from collections.abc import Callable, Mapping
from pathlib import Path

from ..policy.audit import AUDIT_SOCKET_NAME
from ..qubesd.server import HostError, QubesdServer
from .cgroups import Backend, NoCgroups, detect
from .config import (
    UID_RANGE,
    HostConfig,
)
from .confine import boot_argv, confine_args
from .dom0_side import (
    choose_frontend,
    start_policy_agent,
    start_policy_daemon,
    write_dom0_launchers,
)
from .domain import Domain
from .launchers import domain_programs, program, write_program
from .methods import QubesdMethods
from .paths import Paths, copy_tree, give, make_dir, remove
from .processes import read_info, spawn, terminate, wait_path
from .relays import REMOTE_DIR_VARIABLE, refuse_power, write_remote_entries
from .sandbox import (
    KEPT_CAPS,
    SANDBOX_RUN,
    SANDBOX_VCHAN,
    Account,
    HostLayout,
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

__all__ = ["Manager"]

START_TIMEOUT = 60.0
#: the accounts' shell in a domain, as in a Qubes qube (bash), where the host has it
_LOGIN_SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
MAX_DISPOSABLES = 9999


class Manager:
    def __init__(self, config: HostConfig, state_dir: Path, bwrap: str | None,
                 env: Mapping[str, str] | None = None,
                 log: Callable[[str], None] | None = None,
                 policy_agent_args: list[str] | None = None,
                 terminal: bool = False) -> None:
        self.base_env = dict(os.environ if env is None else env)
        self.log = log or (lambda msg: print(f"qrexec-host: {msg}", file=sys.stderr,
                                             flush=True))
        self.config = config = unprivileged_accounts(config, self.log)
        self.paths = Paths.make(state_dir.resolve(), config.dom0.root, self.base_env)
        #: what its qubesd sockets serve
        self.methods = QubesdMethods(self)
        self.bwrap = bwrap
        self.layout: HostLayout | None = host_layout() if bwrap else None
        self.policy_agent_args = policy_agent_args or []
        #: `up` runs in the foreground on a terminal: ask rules can be asked there
        self.terminal = terminal
        self.domains: dict[str, Domain] = {n: Domain(c) for n, c in config.domains.items()}
        self.domains["dom0"].domid = 0
        self.domains["dom0"].state = "Running"
        for d in self.domains.values():
            if d.cfg.type == "RemoteVM":  # it runs on its own host, as far as we can tell
                d.state = "Running"
        self.next_domid = 1
        #: whether domains get user namespaces of their own (needs the host's root)
        self.userns = bwrap is not None and os.geteuid() == 0
        self.services: list[asyncio.subprocess.Process] = []
        self.servers: list[QubesdServer] = []
        #: set once shutdown has begun; `stopped` once it has ended
        self.stopping = False
        self.stopped = asyncio.Event()
        #: how domains are limited: chosen by `up`
        self.cgroups: Backend = NoCgroups()

    # -- bring-up and shutdown ------------------------------------------------------------
    def prepare_state(self) -> None:
        p = self.paths
        p.state.mkdir(parents=True, exist_ok=True)
        for stale in (p.socket_dir, p.vchan, p.state / "dom", p.state / "disp", p.dom0_rpc,
                      p.state / "bin"):
            shutil.rmtree(stale, ignore_errors=True)
        for d in (p.socket_dir, p.vchan / "0", p.state / "dom", p.state / "disp", p.dom0_rpc,
                  p.state / "bin", p.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        for d in (p.state, p.vchan):
            os.chmod(d, 0o755)
        os.chmod(p.vchan / "0", 0o711)
        write_dom0_launchers(p, self.base_env)

    async def up(self) -> None:
        """dom0's side: qubesd sockets, policy daemon, policy agent; then autostart domains.

        The main qubesd socket opens last: clients take an answer on it as "the host is up",
        and a call made before the policy agent's services are linked would be denied.
        """
        self.prepare_state()
        self.cgroups = detect(self.paths.state, self.log)
        self.log(f"domain limits: {self.cgroups.name}")
        env = self.paths.dom0_env(self.base_env)
        await self._serve_qubesd(self.paths.qubesd_internal, internal=True)
        await start_policy_daemon(self.paths, env, self.log, self.services)
        agent_args, ask = choose_frontend(self.policy_agent_args, self.terminal,
                                          self.base_env)
        agent = await start_policy_agent(self.paths, env, agent_args, self.log, ask=ask)
        if agent is not None:
            self.services.append(agent)
        await self._serve_qubesd(self.paths.qubesd, internal=False)
        for d in list(self.domains.values()):
            if d.cfg.autostart and not self.stopping:
                try:
                    await self.start(d.name)
                except HostError as err:
                    if err.exc_type != "QubesVMNotHaltedError":  # started meanwhile: fine
                        # `up` has not done what the file asks: it fails, and says why
                        raise HostError(err.exc_type, f"autostart of {d.name} failed: "
                                        f"{err.message}") from err

    async def _serve_qubesd(self, path: Path, internal: bool) -> None:
        server = QubesdServer(self.methods, str(path), internal)
        await server.start()
        self.servers.append(server)

    async def shutdown(self) -> None:
        if self.stopping:
            await self.stopped.wait()
            return
        self.stopping = True
        await asyncio.gather(*(self.kill(d.name, quiet=True) for d in list(self.domains.values())
                               if d.running and d.name != "dom0"), return_exceptions=True)
        for proc in reversed(self.services):
            await terminate(proc)
        self.services = []
        for server in self.servers:
            await server.close()
        self.servers = []
        p = self.paths
        # the policy daemon's audit socket lies beside its main one (policy/audit.py)
        audit_socket = p.policy_socket.with_name(AUDIT_SOCKET_NAME)
        for sock in (p.policy_socket, audit_socket, p.policy_agent_socket, p.qubesd,
                     p.qubesd_internal):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock)
        # what only a running host needs; the logs (and the lock) stay
        for d in (p.socket_dir, p.vchan, p.state / "dom", p.state / "disp", p.state / "dom0",
                  p.state / "bin"):
            shutil.rmtree(d, ignore_errors=True)
        self.cgroups.close()
        self.stopped.set()

    async def reload(self) -> dict[str, object]:
        """`pyqrexec.host.Reload` (and SIGHUP): the config file read again and applied, all
        or nothing (host/reload.py); added domains with `autostart` are started. The answer
        says what changed and whether the policy loads (its error is logged as at start)."""
        from .config import ConfigError, load
        from .reload import ReloadRefused, plan_reload, policy_problem

        try:
            new = unprivileged_accounts(load(self.config.path), lambda _: None)
            plan = plan_reload(self.config, new, self.domains)
        except (ConfigError, ReloadRefused) as err:
            raise HostError("QubesException", f"nothing changed: {err}") from None
        self.config = new
        for name in plan.removed:
            del self.domains[name]
        for name, (cfg, _) in plan.changed.items():
            self.domains[name].cfg = cfg
        for cfg in plan.added:
            self.domains[cfg.name] = Domain(cfg)
        answer = plan.summary()
        self.log(f"reloaded {self.config.path}: added {answer['added']}, removed "
                 f"{answer['removed']}, changed {answer['changed']}")
        started = []
        for cfg in plan.added:
            if cfg.autostart:
                await self.start(cfg.name)
                started.append(cfg.name)
        answer["started"] = started
        problem = policy_problem(str(self.paths.policy_dir), str(self.paths.legacy_policy))
        if problem:
            self.log(f"policy failed to load: {problem}")
        answer["policy_error"] = problem
        return answer

    async def start(self, name: str) -> None:
        d = self.domains[name]
        refuse_power(d.cfg, "started")
        async with d.lock:
            if d.running:
                raise HostError("QubesVMNotHaltedError", f"Domain is running: {name}")
            try:
                await self._start(d)
            except BaseException:
                await self._stop(d)
                raise

    async def kill(self, name: str, quiet: bool = False) -> None:
        d = self.domains.get(name)
        if d is None:
            raise HostError("QubesVMNotFoundError", f"No such domain: '{name}'")
        if name == "dom0":
            raise HostError("QubesException", "dom0 cannot be killed")
        refuse_power(d.cfg, "killed")
        async with d.lock:
            if not d.running:
                if d.disposable:
                    self._forget(d)
                raise HostError("QubesVMNotStartedError", f"Domain is powered off: {name}")
            await self._stop(d)
        if not quiet:
            self.log(f"{name} halted")

    async def shutdown_domain(self, name: str, timeout: float) -> None:
        """Graceful stop: SIGTERM to the domain's processes, `timeout` seconds for its agent
        to end, then what `kill` does (SIGKILL to whatever is left, cleanup)."""
        d = self.domains[name]
        if name == "dom0":
            raise HostError("QubesException", "dom0 cannot be shut down")
        async with d.lock:
            if not d.running:
                raise HostError("QubesVMNotStartedError", f"Domain is powered off: {name}")
            d.state = "Dying"  # its agent ending now is the shutdown, not a crash
            self._signal_domain(d, signal.SIGTERM)
            if d.agent is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(d.agent.wait()), timeout)
            await self._stop(d)
        self.log(f"{name} shut down")

    def _signal_domain(self, d: Domain, sig: int) -> None:
        """`sig` to the domain's process tree: a sandbox's PID 1 (its end ends the
        namespace), a plain agent's process group, and whatever is in its cgroup."""
        pids: set[int] = set()
        if d.cgroup is not None:
            for procs in d.cgroup.procs_files:
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in Path(procs).read_text().split())
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.bwrap and d.ns_pid is not None:
                os.kill(d.ns_pid, sig)
            elif d.agent is not None:
                os.killpg(d.agent.pid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    async def create_disposable(self, template: Domain, want_uuid: bool) -> bytes:
        if template.name == "dom0" and template.cfg.default_dispvm:
            # asked of dom0 (`qrexec-host run --dispvm`): a disposable of its default_dispvm
            template = self.domains[template.cfg.default_dispvm]
        t = template.cfg
        if not t.template_for_dispvms:
            raise HostError("QubesException",
                            f"Domain {t.name} does not have template_for_dispvms set")
        name = next((f"disp{n}" for n in range(1, MAX_DISPOSABLES + 1)
                     if f"disp{n}" not in self.domains), None)
        if name is None:
            raise HostError("QubesException", "too many disposables")
        root = self.paths.state / "disp" / name
        cfg = dataclasses.replace(
            t, name=name, type="DispVM", root=root, uuid=str(uuidlib.uuid4()), tags=(),
            template_for_dispvms=False, autostart=False, internal=False)
        self.domains[name] = Domain(cfg, disposable=True)  # reserve the name while copying
        try:
            await copy_tree(t.root, root)
        except BaseException:
            self._forget(self.domains[name])
            raise
        return f"uuid:{cfg.uuid}".encode() if want_uuid else name.encode()

    # -- starting and stopping one domain ----------------------------------------------------
    async def _start(self, d: Domain) -> None:
        """Views and pair directories, the domain's run and home directories, the agent and
        the daemon. Every directory is made by descriptor in a host-owned parent that no
        domain can write (docs/isolation.md): a domain cannot pre-empt or redirect them."""
        p = self.paths
        domid = self.next_domid
        self.next_domid += 1
        d.domid = domid
        d.state = "Transient"
        if self.userns:
            d.uid_base = self._free_uid_base()
        view = p.vchan / str(domid)
        # the view itself is the host's: the domain writes only inside its pair directories
        make_dir(p.vchan, str(domid), 0o755)
        pairs: list[tuple[Path, int]] = []
        for peer in self.domains.values():
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
        write_remote_entries(run, d.name, (o.cfg for o in self.domains.values()))
        agent_log = p.log_dir / f"agent.{d.name}.log"
        if d.cfg.limits is not None:
            try:
                d.cgroup = self.cgroups.create(d.name, d.cfg.limits)
            except OSError as err:
                raise HostError("QubesException", f"cannot limit {d.name}: {err}") from err
        if self.bwrap:
            d.agent, d.ns_pid = await self._spawn_sandboxed(d, home, view, pairs, agent_log)
            d.watchers.append(asyncio.ensure_future(self._watch(d, d.agent, "agent")))
        else:
            (home / "bin").mkdir()
            for name, text in domain_programs(str(run / "qrexec-agent")).items():
                write_program(home / "bin" / name, text)
            d.agent = await spawn(
                [*user_wrapper(d.cfg.user, die_with_parent=True), *program("qrexec-agent"),
                 f"--agent-socket={run / 'qrexec-agent'}", "--no-fork-server"],
                self._plain_env(d), agent_log, new_session=True, cgroup=d.cgroup)
        daemon_log = p.log_dir / f"qrexec.{d.name}.log"
        d.daemon = await spawn(
            [*program("qrexec-daemon"), "--direct", f"--uuid={d.cfg.uuid}",
             f"--socket-dir={p.socket_dir}", f"--policy-program={p.policy_program}",
             str(domid), d.name, d.cfg.default_user],
            p.dom0_env(self.base_env), daemon_log)
        if not self.bwrap:
            d.watchers.append(asyncio.ensure_future(self._watch(d, d.agent, "agent")))
        d.watchers.append(asyncio.ensure_future(self._watch(d, d.daemon, "daemon")))
        if not all([await wait_path(p.socket_dir / f"qrexec.{name}", START_TIMEOUT,
                                     [d.daemon, d.agent])
                    for name in (d.name, f"uuid:{d.cfg.uuid}")]):
            for log in (agent_log, daemon_log):  # a disposable's logs go with it
                with contextlib.suppress(OSError):
                    for line in log.read_text(errors="replace").splitlines()[-5:]:
                        self.log(f"{log.name}: {line}")
            raise HostError("QubesException",
                            f"domain {d.name} did not start; see {agent_log} and {daemon_log}")
        d.state = "Running"
        self.log(f"{d.name} started (domid {domid})")

    def _free_uid_base(self) -> int:
        """The lowest uid range no running domain holds: a range is reused only once the
        domain that had it is gone, processes and files (its directories are removed)."""
        used = {d.uid_base for d in self.domains.values() if d.uid_base is not None}
        for slot in range(1, (2**31 - self.config.uid_base) // UID_RANGE):
            base = self.config.uid_base + slot * UID_RANGE
            if base not in used:
                return base
        raise HostError("QubesException", "no free uid range for another domain")

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

    async def _watch(self, d: Domain, proc: asyncio.subprocess.Process | None,
                     what: str) -> None:
        """A domain whose agent or daemon ends while it runs is halted, as Xen reports a
        crashed domain: logged, cleaned up, listed as Halted, startable again."""
        if proc is None:
            return
        status = await proc.wait()
        if d.state != "Running" or proc not in (d.agent, d.daemon):
            return  # stopping it is what ended the process
        self.log(f"{d.name}: {what} ended (status {status}); domain halted")
        with contextlib.suppress(HostError):
            await self.kill(d.name, quiet=True)

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

    async def _stop(self, d: Domain) -> None:
        """Terminate the daemon and the sandbox; remove the domain's sockets and files."""
        d.state = "Dying"
        current = asyncio.current_task()
        for task in d.watchers:
            if task is not current:
                task.cancel()
        d.watchers = []
        if d.daemon is not None:
            await terminate(d.daemon)
        if d.agent is not None:
            await terminate(d.agent, group=self.bwrap is None)
        d.daemon = d.agent = None
        d.ns_pid = None
        if d.cgroup is not None:  # what the agent's services left behind
            try:
                await d.cgroup.remove()
            except OSError as err:
                self.log(f"{d.name}: {err}")
            d.cgroup = None
        p = self.paths
        for name in (d.name, str(d.domid), f"uuid:{d.cfg.uuid}"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p.socket_dir / f"qrexec.{name}")
        if d.domid is not None:
            shutil.rmtree(p.vchan / str(d.domid), ignore_errors=True)
            for peer in self.domains.values():
                if peer.domid is not None:
                    remove(p.vchan / str(peer.domid) / str(d.domid))
        shutil.rmtree(p.state / "dom" / d.name, ignore_errors=True)
        d.domid = None
        d.uid_base = None
        d.pairs = []
        d.state = "Halted"
        if d.disposable:
            self._forget(d)

    def _forget(self, d: Domain) -> None:
        """Remove a disposable: its root, logs and entry."""
        shutil.rmtree(d.cfg.root, ignore_errors=True)
        for log in (f"agent.{d.name}.log", f"qrexec.{d.name}.log"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.paths.log_dir / log)
        if self.domains.get(d.name) is d:
            del self.domains[d.name]

    # -- running programs inside a domain ------------------------------------------------------
    def _confine(self, d: Domain, target: int | None = None) -> list[str]:
        """argv prefix taking a process started in `d`'s namespaces (or, with `target`, on
        the host, joining those of the sandbox whose PID 1 that is) the rest of the way:
        `d`'s user namespace and ids, the agent's capabilities and account, the filter."""
        uid_map = (d.uid_base, UID_RANGE) if d.uid_base is not None else None
        return [*boot_argv(sys.executable, source_dir()),
                *confine_args(uid_map, KEPT_CAPS, d.cfg.user, target=target)]

    def _sibling_sandbox(self, d: Domain) -> list[str]:
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
        running = {peer.domid for peer in self.domains.values() if peer.domid is not None}
        pairs = [(pair, peer) for pair, peer in d.pairs if peer in running and pair.is_dir()]
        merged = self._merged_dirs(d, build=False)
        spec = SandboxSpec(name=d.name, root=d.cfg.root, run_dir=home / "run",
                           vchan_view=view, pairs=tuple(pairs), merged=merged,
                           env=self._sandbox_env(d),
                           homes=_home_binds(home))
        return bwrap_argv(spec, self.layout, self._confine(d), self.bwrap)

    def exec_spec(self, d: Domain) -> dict[str, object]:
        """How `call` runs a program inside `d`: argv prefix, environment, agent socket.

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
                prefix = self._sibling_sandbox(d)
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
