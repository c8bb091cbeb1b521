"""Two (or three) qrexec-hosts on this machine joined by a real OpenSSH sshd (docs/remote.md).

Host A runs as root; every receiving host runs as an unprivileged account of its own, with
an sshd of its own on a free localhost port (its own host key, `AuthorizedKeysFile` in its
directory): the account sshd runs as is the only one it can log in, and the forced command
it runs talks to that host's qubesd socket, so host and sshd share the account.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from .harness import program, wait_for
from .host_world import HostWorld, executable, service

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
SSH = shutil.which("ssh")
SYSTEM_PYTHON = "/usr/bin/python3"
#: the receiving hosts' account: sshd needs a real login shell to run a forced command
ACCOUNT = "qrexec-remote"

needs_ssh = pytest.mark.skipif(SSHD is None or SSH is None or os.geteuid() != 0
                               or not os.access(SYSTEM_PYTHON, os.X_OK),
                               reason="needs sshd and ssh (openssh-server, openssh-client) "
                               "and root to make the test account")

ECHO = """\
#!/bin/sh
echo "in $QREXEC_SERVICE_FULL_NAME from $QREXEC_REMOTE_DOMAIN"
cat
"""
STATUS = "#!/bin/sh\ncat >/dev/null\nexit ${1:-42}\n"


def account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(ACCOUNT)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/bin/sh", "--home-dir",
                        "/nonexistent", "--no-create-home", "--user-group", ACCOUNT],
                       check=True, capture_output=True)
        return pwd.getpwnam(ACCOUNT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RemoteHost(HostWorld):
    """A HostWorld whose `up`, `down` and commands run as `ACCOUNT` (or root for A)."""

    def __init__(self, layout_text: str, roots: dict[str, dict[str, str]],
                 policy: str, as_account: bool) -> None:
        self.as_account = as_account

        def layout(top: Path) -> str:
            for name, services in roots.items():
                (top / name).mkdir()
                for svc, text in services.items():
                    service(top / name, svc, text)
            pol = top / "dom0/etc/qubes/policy.d"
            pol.mkdir(parents=True)
            (pol / "30-remote.policy").write_text(policy)
            return layout_text

        super().__init__("plain", layout)
        self.ssh_dir = self.dir / "ssh"
        self.ssh_dir.mkdir()
        if as_account:
            a = account()
            subprocess.run(["chown", "-R", f"{a.pw_uid}:{a.pw_gid}", str(self.dir)],
                           check=True)
        self.sshd: subprocess.Popen[bytes] | None = None
        self.port = 0

    def env(self) -> dict[str, str]:
        e = super().env()
        if self.as_account:
            e["HOME"] = str(self.dir)
        return e

    def argv(self, *args: str) -> list[str]:
        base = super().argv(*args)
        if not self.as_account:
            return base
        a = account()
        # a Python the account can run (the tests' own may live below /root)
        return ["setpriv", f"--reuid={a.pw_uid}", f"--regid={a.pw_gid}", "--clear-groups",
                "--", SYSTEM_PYTHON, "-m", "pyqrexec.cli.qrexec_host", *base[len(program(
                    "qrexec-host")):]]

    def start_sshd(self) -> None:
        """sshd as ACCOUNT on a free port; its host key is `ssh/host_key.pub`."""
        assert SSHD is not None
        d = self.ssh_dir
        if not (d / "host_key").exists():  # a restarted sshd keeps its key and port
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(d / "host_key")], check=True)
            (d / "authorized_keys").touch()
            self.port = free_port()
        (d / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1:{self.port}\nHostKey {d / 'host_key'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile none\nUsePAM no\n"
            "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin no\nLogLevel VERBOSE\n")
        a = account()
        for path in d.iterdir():
            os.chown(path, a.pw_uid, a.pw_gid)
        log = open(self.dir / "sshd.log", "wb")  # noqa: SIM115 - handed to the child
        self.sshd = subprocess.Popen(
            ["setpriv", f"--reuid={a.pw_uid}", f"--regid={a.pw_gid}", "--clear-groups",
             "--", SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

        def listening() -> bool:
            assert self.sshd is not None
            if self.sshd.poll() is not None:
                raise AssertionError((self.dir / "sshd.log").read_text())
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, 20, "sshd listening")

    def host_key(self) -> str:
        return " ".join((self.ssh_dir / "host_key.pub").read_text().split()[:2])

    def stop_sshd(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            os.killpg(self.sshd.pid, 9)
            self.sshd.wait()

    def close(self) -> None:
        self.stop_sshd()
        super().close()


def join(sender: RemoteHost, relay: str, remotevm: str, receiver: RemoteHost,
         receiving_relay: str, sources: str) -> str:
    """The set-up docs/remote.md describes: key in `sender`'s relay, entry on `receiver`.
    Returns the key line."""
    init = sender.host("remote", "init", relay)
    assert init.returncode == 0, init.stderr
    key = init.stdout.decode().strip()
    allow = receiver.host("remote", "allow", receiving_relay, f"--key={key}",
                          f"--sources={sources}",
                          f"--authorized-keys={receiver.ssh_dir / 'authorized_keys'}")
    assert allow.returncode == 0, allow.stderr
    conn = sender.host("remote", "connect", relay, remotevm, "--host=127.0.0.1",
                       f"--port={receiver.port}", f"--user={ACCOUNT}",
                       f"--host-key={receiver.host_key()}")
    assert conn.returncode == 0, conn.stderr
    return key


__all__ = ["RemoteHost", "join", "needs_ssh", "ECHO", "STATUS", "executable", "free_port"]
