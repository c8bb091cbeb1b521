"""qrexec-host's domain manager: the host's bring-up and shutdown, each domain's life (start,
kill, graceful shutdown, a crash noticed), disposables and reloads (asyncio).

Where things live is host/paths.py; dom0's programs, host/dom0_side.py; how a domain's
processes are made, host/spawning.py; the qubesd methods that drive all this, host/methods.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import uuid as uuidlib
from collections.abc import Callable, Mapping
from pathlib import Path

from ..policy.audit import AUDIT_SOCKET_NAME
from ..qubesd.server import HostError, QubesdServer
from .cgroups import Backend, NoCgroups, detect
from .config import ConfigError, HostConfig, load
from .dom0_side import (
    choose_frontend,
    start_policy_agent,
    start_policy_daemon,
    write_dom0_launchers,
)
from .domain import Domain
from .methods import QubesdMethods
from .paths import Paths, copy_tree, remove
from .processes import terminate, wait_path
from .relays import refuse_power
from .reload import ReloadRefused, plan_reload, policy_problem
from .spawning import Spawner, unprivileged_accounts

__all__ = ["Manager"]

START_TIMEOUT = 60.0
MAX_DISPOSABLES = 9999


class Manager:
    def __init__(self, config: HostConfig, state_dir: Path, bwrap: str | None,
                 env: Mapping[str, str],
                 log: Callable[[str], None] | None = None,
                 policy_agent_args: list[str] | None = None,
                 terminal: bool = False) -> None:
        #: qrexec-host's own environment, which dom0's programs and the domains start from
        self.base_env = dict(env)
        self.log = log or (lambda msg: print(f"qrexec-host: {msg}", file=sys.stderr,
                                             flush=True))
        self.config = config = unprivileged_accounts(config, self.log)
        self.paths = Paths.make(state_dir.resolve(), config.dom0.root, self.base_env)
        self.spawner = Spawner(self.paths, self.base_env, bwrap, config.uid_base)
        #: what its qubesd sockets serve
        self.methods = QubesdMethods(self)
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
        # what the daemons log names every call (and the audit trail, its bytes): for the
        # host's account and group, as /var/log/qubes is dom0's; no domain program writes there
        os.chmod(p.log_dir, 0o750)
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
            if self.spawner.bwrap and d.ns_pid is not None:
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
        """A domid, its directories, the agent and the daemon (host/spawning.py); running once
        the daemon's sockets and the agent's trigger socket are there."""
        domid = self.next_domid
        self.next_domid += 1
        d.domid = domid
        d.state = "Transient"
        if self.spawner.userns:
            d.uid_base = self.spawner.free_uid_base(self.domains.values())
        home, view, pairs = self.spawner.make_dirs(d, self.domains.values())
        agent_log = self.paths.log_dir / f"agent.{d.name}.log"
        if d.cfg.limits is not None:
            try:
                d.cgroup = self.cgroups.create(d.name, d.cfg.limits)
            except OSError as err:
                raise HostError("QubesException", f"cannot limit {d.name}: {err}") from err
        d.agent, d.ns_pid = await self.spawner.start_agent(d, home, view, pairs, agent_log)
        d.watchers.append(asyncio.ensure_future(self._watch(d, d.agent, "agent")))
        daemon_log = self.paths.log_dir / f"qrexec.{d.name}.log"
        d.daemon = await self.spawner.start_daemon(d, daemon_log)
        d.watchers.append(asyncio.ensure_future(self._watch(d, d.daemon, "daemon")))
        await self._wait_started(d, home / "run" / "qrexec-agent", agent_log, daemon_log)
        d.state = "Running"
        self.log(f"{d.name} started (domid {domid})")

    async def _wait_started(self, d: Domain, trigger: Path, agent_log: Path,
                            daemon_log: Path) -> None:
        """Until `d`'s daemon has made its sockets and its agent its trigger socket
        (`trigger`, which the agent makes after the daemon's HELLO: a program that the start
        lets run in `d`, say a forced command's relay, calls through it at once); a start
        that fails says why, with the last lines of its logs (a disposable's logs go with
        it)."""
        socket_dir = self.paths.socket_dir
        procs = [d.daemon, d.agent]
        if (all([await wait_path(socket_dir / f"qrexec.{name}", START_TIMEOUT, procs)
                 for name in (d.name, f"uuid:{d.cfg.uuid}")])
                # the domain's own directory: seen, never followed
                and await wait_path(trigger, START_TIMEOUT, procs, exists=os.path.lexists)):
            return
        for log in (agent_log, daemon_log):
            with contextlib.suppress(OSError):
                for line in log.read_text(errors="replace").splitlines()[-5:]:
                    self.log(f"{log.name}: {line}")
        raise HostError("QubesException",
                        f"domain {d.name} did not start; see {agent_log} and {daemon_log}")

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
            await terminate(d.agent, group=self.spawner.bwrap is None)
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
