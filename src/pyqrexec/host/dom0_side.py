"""dom0's side of qrexec-host: the programs and services dom0 has on a Qubes system.

The policy daemon, the policy agent (another component, started when installed) with the front
end that answers ask rules, the launchers of dom0's services, and the settings those services
need back from the host."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping

from ..qubesd.server import HostError
from ..services.environment import CALL_VARIABLES
from .launchers import program, write_launcher
from .paths import Paths
from .processes import spawn, terminate, wait_path

__all__ = ["DOM0_SERVICES", "dom0_service_settings", "write_dom0_launchers",
           "start_policy_daemon", "policy_agent_argv", "choose_frontend", "start_policy_agent"]


#: dom0 services this host installs in dom0's runtime service directory: service name ->
#: the pyqrexec program that serves it (run with no arguments, as qrexec runs services)
DOM0_SERVICES: dict[str, str] = {
    "policy.RegisterArgument": "policy-register-argument",
    **{f"policy.{method}": "qubes-policy-admin"
       for method in ("List", "Get", "Replace", "Remove", "GetFiles", "include.List",
                      "include.Get", "include.Replace", "include.Remove")},
}


def dom0_service_settings(dom0_env: Mapping[str, str]) -> dict[str, str]:
    """The host's `QREXEC*` settings a dom0 service needs back (QREXEC_POLICY_DIR, …).

    The service runner removes every inherited `QREXEC*` variable but QREXEC_SERVICE_PATH and
    QREXEC_AGENT_PID (docs/reference/services.md#arguments-and-environment); on Qubes the services
    find their files at fixed paths,
    here those live under the state directory, so the launcher restores them. The per-call
    variables are the runner's alone.
    """
    runners = {os.fsdecode(n) for n in CALL_VARIABLES} | {"QREXEC_AGENT_PID",
                                                            "QREXEC_SERVICE_PATH"}
    return {k: v for k, v in dom0_env.items()
            if k.startswith("QREXEC") and k.isidentifier() and k not in runners}


def write_dom0_launchers(paths: Paths, base_env: Mapping[str, str]) -> None:
    """qrexec-policy-exec naming dom0's policy directory, and dom0's services."""
    write_launcher(paths.policy_program, "qrexec-policy-exec", f"--path={paths.policy_dir}")
    settings = dom0_service_settings(paths.dom0_env(base_env))
    for service, name in DOM0_SERVICES.items():
        write_launcher(paths.dom0_rpc / service, name, env=settings)


async def start_policy_daemon(paths: Paths, env: dict[str, str], log: Callable[[str], None],
                              services: list[asyncio.subprocess.Process]) -> None:
    """Start qrexec-policy-daemon and wait for its socket. It joins `services` as soon as it
    runs: one that fails to start is stopped with the rest at shutdown."""
    p = paths
    argv = [*program("qrexec-policy-daemon"), f"--policy-path={p.policy_dir}",
            f"--socket-path={p.policy_socket}",
            f"--eval-socket-path={p.dom0_rpc / 'policy.EvalSimple'}",
            f"--gui-socket-path={p.dom0_rpc / 'policy.EvalGUI'}"]
    # one left by a manager that was killed would pass for the new daemon's at once
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p.policy_socket)

    def policy_line(line: str) -> None:
        """The policy daemon's log line as it is written: a policy that does not load is
        the administrator's to fix, so it goes where they look (stderr of `up`), with its
        FILE:LINE, at start and at every reload that fails."""
        prefix = "error loading policy: "
        if line.startswith(prefix):
            log(f"policy failed to load: {line[len(prefix):]}")

    proc = await spawn(argv, env, p.log_dir / "policy-daemon.log", echo=policy_line)
    services.append(proc)
    if not await wait_path(p.policy_socket, 30, [proc]):
        raise HostError("QubesException", "the policy daemon did not start; see "
                        f"{p.log_dir / 'policy-daemon.log'}")


def policy_agent_argv() -> list[str] | None:
    """How to run qrexec-policy-agent: the pyqrexec module if present, else one on PATH."""
    try:
        found = importlib.util.find_spec("pyqrexec.cli.qrexec_policy_agent") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return program("qrexec-policy-agent")
    exe = shutil.which("qrexec-policy-agent")
    return [exe] if exe else None


def choose_frontend(args: list[str], terminal: bool,
                    env: Mapping[str, str]) -> tuple[list[str], str | None]:
    """The policy agent's arguments and who answers ask rules (None: nobody).

    Given options win; else the terminal `up` runs on, else a GTK dialog on the display,
    else nobody: then policy.Ask is not offered, and an ask is denied as "no front end to
    ask" (policy_daemon/agent_client.py), never as if someone had said no."""
    given = ("--frontend", "--answer-program", "--tty")
    if any(a.startswith(given) for a in args):
        deny = any(a in ("--frontend=deny",) for a in args)
        return args, None if deny else "as configured"
    if terminal:
        return [*args, "--frontend=terminal", "--tty=/dev/tty"], "on this terminal"
    if env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        argv = policy_agent_argv()
        try:
            usable = argv is not None and subprocess.run(
                [*argv, "--frontend=gtk", "--check"], env=dict(env), timeout=30,
                stdin=subprocess.DEVNULL, capture_output=True).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            usable = False
        if usable:
            return [*args, "--frontend=gtk"], "in a GTK dialog"
    return [*args, "--frontend=deny"], None


async def start_policy_agent(paths: Paths, env: dict[str, str], extra: list[str],
                             log: Callable[[str], None],
                             ask: str | None = "as configured"
                             ) -> asyncio.subprocess.Process | None:
    """Start qrexec-policy-agent on its socket and link policy.Notify (and policy.Ask when
    `ask` says who answers) to it in dom0's runtime service directory; None (and a note)
    when it is not installed."""
    if ask is None:
        log("no front end to ask: ask rules will be denied. To be asked, run `up` on a "
            "terminal, or with DISPLAY and GTK, or give "
            "--policy-agent-arg=--answer-program=PROG")
    elif ask != "as configured":
        log(f"ask rules are asked {ask}")
    argv = policy_agent_argv()
    if argv is None:
        log("qrexec-policy-agent not found: ask rules are denied, notifications dropped")
        return None
    sock = paths.policy_agent_socket
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    proc = await spawn([*argv, f"--socket-path={sock}", *extra], env,
                       paths.log_dir / "policy-agent.log", echo=lambda _: None)
    if not await wait_path(sock, 30, [proc]):
        log(f"qrexec-policy-agent did not start; see {paths.log_dir / 'policy-agent.log'}")
        await terminate(proc)
        return None
    for service in ("policy.Ask", "policy.Notify") if ask is not None else ("policy.Notify",):
        link = paths.dom0_rpc / service
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(sock, link)
    return proc
