"""Where qrexec-host keeps everything, and how it makes and removes its files there.

State directory layout (docs/qrexec-host.md):

    qubesd.sock, qubesd.internal.sock, policy.sock, policy-agent.sock   (env overridable)
    qubes/            daemon sockets qrexec.NAME, qrexec.DOMID, qrexec.uuid:UUID
    vchan/0/          dom0's vchan view; vchan/DOMID/ a domain's (VCHAN_PAIR_DIRS layout)
    dom/NAME/run/     the domain's /run/qubes (trigger socket qrexec-agent)
    dom/NAME/merged/  its merged /etc, /usr/bin, … (bubblewrap mode)
    disp/dispN/       a disposable's root (copy of its template's)
    dom0/rpc/         dom0's runtime services (policy.Ask, policy.EvalSimple, …)
    bin/              qrexec-policy-exec wrapper naming dom0's policy directory; usr_bin/,
                      the /usr/bin of sandboxes whose root has none (bubblewrap mode)
    log/              qrexec.NAME.log (daemon), agent.NAME.log, policy-daemon.log, …

The directories a domain could reach are made by descriptor (`make_dir`): docs/isolation.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..qubesd.server import HostError
from ..system.parent_death import dies_with_this_process
from .sandbox import source_dir

__all__ = ["Paths", "make_dir", "give", "remove", "copy_tree"]


@dataclass(frozen=True)
class Paths:
    """Where everything lives; the upstream paths follow the variables of
    docs/reference/cli.md#common-environment."""

    state: Path
    dom0_root: Path
    qubesd: Path
    qubesd_internal: Path
    policy_socket: Path
    vchan: Path
    legacy_policy: Path

    @classmethod
    def make(cls, state: Path, dom0_root: Path, env: Mapping[str, str]) -> Paths:
        return cls(
            state=state,
            dom0_root=dom0_root,
            qubesd=Path(env.get("QUBESD_SOCKET") or state / "qubesd.sock"),
            qubesd_internal=Path(env.get("QUBESD_INTERNAL_SOCKET")
                                 or state / "qubesd.internal.sock"),
            policy_socket=Path(env.get("QREXEC_POLICY_SOCKET") or state / "policy.sock"),
            vchan=Path(env.get("VCHAN_SOCKET_DIR") or state / "vchan"),
            legacy_policy=Path(env.get("QREXEC_LEGACY_POLICY_DIR")
                               or dom0_root / "etc/qubes-rpc/policy"),
        )

    @property
    def socket_dir(self) -> Path:
        return self.state / "qubes"

    @property
    def log_dir(self) -> Path:
        return self.state / "log"

    @property
    def dom0_rpc(self) -> Path:
        return self.state / "dom0" / "rpc"

    @property
    def policy_dir(self) -> Path:
        return self.dom0_root / "etc/qubes/policy.d"

    @property
    def policy_program(self) -> Path:
        return self.state / "bin" / "qrexec-policy-exec"

    @property
    def policy_agent_socket(self) -> Path:
        return self.state / "policy-agent.sock"

    def dom0_service_path(self) -> str:
        r = self.dom0_root
        return f"{self.dom0_rpc}:{r}/usr/local/etc/qubes-rpc:{r}/etc/qubes-rpc"

    def client_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """Environment of a dom0 program talking to domains (e.g. qrexec-client)."""
        env = dict(base)
        env.update(PYTHONPATH=source_dir(), VCHAN_DOMAIN="0",
                   VCHAN_SOCKET_DIR=str(self.vchan / "0"), VCHAN_PAIR_DIRS="1")
        return env

    def dom0_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """Environment of every dom0 program qrexec-host starts."""
        r = self.dom0_root
        env = self.client_env(base)
        env.update(
            QUBESD_SOCKET=str(self.qubesd),
            QUBESD_INTERNAL_SOCKET=str(self.qubesd_internal),
            QREXEC_POLICY_SOCKET=str(self.policy_socket),
            QREXEC_LEGACY_POLICY_DIR=str(self.legacy_policy),
            QREXEC_POLICY_DIR=str(self.policy_dir),
            QREXEC_SERVICE_PATH=self.dom0_service_path(),
            QUBES_RPC_CONFIG_PATH=(f"{r}/usr/local/etc/qubes/rpc-config:"
                                   f"{r}/etc/qubes/rpc-config"),
            QREXEC_LOG_DIR=str(self.log_dir),
            QREXEC_POLICY_ADMIN_LOG=str(self.log_dir / "policy-admin.log"),
        )
        return env


def make_dir(parent: Path, name: str, mode: int, uid: int = -1, gid: int = -1) -> Path:
    """Make `parent/name` (a single component) and set its mode and owner through a
    descriptor: nothing swapped in by name between the steps is followed or changed."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a single path component: {name!r}")
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.mkdir(name, 0o700, dir_fd=pfd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=pfd)
        try:
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    finally:
        os.close(pfd)
    return parent / name


def give(path: Path, user: str | None) -> None:
    """Let the agent's account create its sockets in `path`."""
    if user is None:
        return
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        os.chmod(path, 0o777)
        return
    with contextlib.suppress(PermissionError):
        os.chown(path, pw.pw_uid, pw.pw_gid)


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


async def copy_tree(src: Path, dst: Path) -> None:
    """A fresh copy of a root directory (copy-on-write where the filesystem can)."""
    proc = await asyncio.create_subprocess_exec(
        "cp", "-a", "--reflink=auto", "--", str(src), str(dst),
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        preexec_fn=dies_with_this_process())
    _, err = await proc.communicate()
    if proc.returncode != 0:
        shutil.rmtree(dst, ignore_errors=True)
        raise HostError("QubesException",
                        f"cannot copy {src}: {err.decode(errors='replace').strip()}")
