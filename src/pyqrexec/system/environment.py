"""The process environment as one typed object (docs/architecture.md#environment-and-logging).

A program's `cli/` module builds one `Environment` from `os.environ` at start and passes it (or
the fields a callee needs) down; nothing below `cli/` reads `os.environ` itself, which
`tests/unit/test_environment.py` checks. The variables and their defaults are listed in
docs/reference/cli.md#common-environment; the defaults themselves are in `system.defaults`.

On the two per-call clients' start-up path: a plain class with `__slots__`, no dataclasses,
typing or re.
"""

from __future__ import annotations

import os

from ..protocol.handshake import own_max_version
from . import defaults

#: on a client's start-up path: importing `typing` would cost ~3 ms (mypy takes it as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["Environment", "split_dir_list", "c_atoi", "REMOTE_DIR_VARIABLE"]

#: (ext) names the directory of the RemoteVM entries a relaying qube reads (docs/remote.md)
REMOTE_DIR_VARIABLE = "PYQREXEC_REMOTE_DIR"


def split_dir_list(value: str) -> tuple[str, ...]:
    """A colon-separated directory list; empty components are skipped."""
    return tuple(part for part in value.split(":") if part)


def c_atoi(text: str) -> int:
    """C `atoi`: leading white space, a sign, leading digits; 0 when there are none."""
    text = text.lstrip(" \t\n\r\f\v")
    sign = 1
    if text[:1] in ("+", "-"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return sign * int(digits) if digits else 0


class Environment:
    """Every variable a program below `cli/` uses, parsed, with its default; `variables` is
    the whole mapping (what a service or a child inherits, `environb` as bytes)."""

    __slots__ = (
        "variables", "environb", "path", "user", "service_path", "rpc_config_path",
        "vchan_socket_dir", "vchan_domain", "vchan_pair_dirs", "max_protocol_version",
        "max_protocol_warning", "policy_socket", "policy_dir", "legacy_policy_dir",
        "grants_file", "qubesd_socket", "qubesd_internal_socket", "notify_socket",
        "remote_domain", "ssh_original_command", "remote_dir",
    )

    def __init__(self, variables: Mapping[str, str]) -> None:
        env = self.variables = dict(variables)
        #: `variables` as bytes, what an executed service inherits (the same bytes as
        #: `os.environb` for an environment read from `os.environ`); encoded now (some 20 µs),
        #: not again in each call process a daemon forks with it
        self.environb: dict[bytes, bytes] = {
            os.fsencode(k): os.fsencode(v) for k, v in env.items()}
        #: `PATH` for finding programs (`os.defpath` when unset, as `execvp` does)
        self.path: str = env.get("PATH", os.defpath)
        #: `USER`: names a user's fork server socket; None when unset
        self.user: str | None = env.get("USER")
        # set even when empty: an empty list is a deliberate "no directories"
        self.service_path: tuple[str, ...] = split_dir_list(
            env.get("QREXEC_SERVICE_PATH", defaults.SERVICE_PATH))
        self.rpc_config_path: tuple[str, ...] = split_dir_list(
            env.get("QUBES_RPC_CONFIG_PATH", defaults.RPC_CONFIG_PATH))
        self.vchan_socket_dir: str = env.get("VCHAN_SOCKET_DIR") or defaults.VCHAN_SOCKET_DIR
        #: `VCHAN_DOMAIN` with C `atoi` semantics, as upstream's programs read it
        self.vchan_domain: int = c_atoi(env.get("VCHAN_DOMAIN", ""))
        #: `VCHAN_PAIR_DIRS` (ext) set and not empty: one directory per pair of domains
        self.vchan_pair_dirs: bool = bool(env.get("VCHAN_PAIR_DIRS"))
        version, warning = own_max_version(env.get("QREXEC_MAX_PROTOCOL_VERSION"))
        self.max_protocol_version: int = version
        #: why `QREXEC_MAX_PROTOCOL_VERSION` was ignored; the program logs it once
        self.max_protocol_warning: str | None = warning
        self.policy_socket: str = env.get("QREXEC_POLICY_SOCKET") or defaults.POLICY_SOCKET
        #: `QREXEC_POLICY_DIR` (ext): the one policy directory of a host that keeps it
        #: elsewhere; None when unset or empty
        self.policy_dir: str | None = env.get("QREXEC_POLICY_DIR") or None
        self.legacy_policy_dir: str = env.get("QREXEC_LEGACY_POLICY_DIR",
                                              defaults.LEGACY_POLICY_DIR)
        #: `QREXEC_GRANTS_FILE` (ext); None: beside the policy socket
        self.grants_file: str | None = env.get("QREXEC_GRANTS_FILE") or None
        self.qubesd_socket: str = env.get("QUBESD_SOCKET", defaults.QUBESD_SOCKET)
        self.qubesd_internal_socket: str = env.get("QUBESD_INTERNAL_SOCKET",
                                                   defaults.QUBESD_INTERNAL_SOCKET)
        #: `NOTIFY_SOCKET`: the service manager's socket; None when unset or empty
        self.notify_socket: str | None = env.get("NOTIFY_SOCKET") or None
        #: `QREXEC_REMOTE_DOMAIN`: the caller, in a service's environment
        self.remote_domain: str = env.get("QREXEC_REMOTE_DOMAIN", "")
        #: `SSH_ORIGINAL_COMMAND`: what an ssh client asked a forced command for
        self.ssh_original_command: str | None = env.get("SSH_ORIGINAL_COMMAND")
        #: `PYQREXEC_REMOTE_DIR` (ext): the RemoteVM entries of a relaying qube
        self.remote_dir: str = env.get(REMOTE_DIR_VARIABLE) or defaults.REMOTE_DIR

    @classmethod
    def current(cls) -> Environment:
        """This process's environment; for `cli/` modules and the client library's defaults."""
        return cls(os.environ)

    def log_problems(self, log: Callable[[str], None]) -> None:
        """Say what was ignored; once per program, when its log is ready."""
        if self.max_protocol_warning:
            log(self.max_protocol_warning)

    @property
    def policy_dirs(self) -> list[str]:
        """Both upstream policy directories; `QREXEC_POLICY_DIR` alone when set (a qrexec-host's
        dom0 tools must read the policy its daemons read)."""
        return [self.policy_dir] if self.policy_dir else list(defaults.POLICY_DIRS)

    @property
    def persistent_policy_dir(self) -> str:
        """Where policy files are written: `QREXEC_POLICY_DIR`, else /etc/qubes/policy.d."""
        return self.policy_dir or defaults.POLICY_DIRS[-1]

    def grants_path(self, policy_socket: str | None = None) -> str:
        """`QREXEC_GRANTS_FILE`, else `policy-grants.json` beside the policy socket (given, or
        `QREXEC_POLICY_SOCKET`): a runtime file (docs/audit.md)."""
        if self.grants_file:
            return self.grants_file
        sock = policy_socket or self.policy_socket
        return os.path.join(os.path.dirname(sock), "policy-grants.json")
