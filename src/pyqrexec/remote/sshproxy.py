"""`qubesair.SSHProxy`: the transport service a relay domain runs for a call to a RemoteVM
(docs/remote.md).

The policy sends the call to the relay as `qubesair.SSHProxy+LOCAL+SERVICE+ARG`; the service
looks up LOCAL's name on the other host in `/remote/LOCAL` and runs OpenSSH's `ssh` to the
host block LOCAL of its `ssh_config`, asking for `CALLER REMOTE SERVICE+ARG`. The receiving
key's forced command decides what that runs. ssh inherits the call's stdin, stdout and
stderr, so data, EOF in each direction, stderr and the exit status pass through unchanged;
when ssh itself fails (status 255) one line says so and the status is 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..host.config import validate_name
from ..system.environment import Environment
from .watch import watch

__all__ = ["main", "ssh_argv"]

NAME = "qubesair.SSHProxy"
#: ssh's own failures (unreachable host, unknown host key, refused key)
SSH_FAILED = 255
#: the seconds after which a silent peer counts as gone (interval × count)
ALIVE_INTERVAL, ALIVE_COUNT = 2, 3


def ssh_argv(config_dir: Path, host: str, command: str) -> list[str]:
    return ["ssh", "-F", str(config_dir / "ssh_config"), "-T", "-a", "-x",
            "-o", "BatchMode=yes", "-o", "LogLevel=QUIET",
            "-o", f"IdentityFile={config_dir / 'id_ed25519'}", "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", f"UserKnownHostsFile={config_dir / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", "UpdateHostKeys=no", "-o", "ControlMaster=no", "-o", "ControlPath=none",
            "-o", f"ServerAliveInterval={ALIVE_INTERVAL}",
            "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
            "--", host, command]


def _fail(message: str) -> int:
    print(f"{NAME}: {message}", file=sys.stderr, flush=True)
    return 1


def main(env: Environment, argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "--config-dir":
        return _fail("usage: qubesair.SSHProxy --config-dir DIR LOCAL+SERVICE+ARG")
    config_dir, spec = Path(args[1]), args[2]
    local, _, rest = spec.partition("+")
    service, _, arg = rest.partition("+")
    if validate_name(local) is not None or not service:
        return _fail(f"malformed argument {spec!r} (LOCAL+SERVICE+ARG)")
    caller = env.remote_domain
    if validate_name(caller) is not None:
        return _fail("no caller (QREXEC_REMOTE_DOMAIN)")
    entry = Path(env.remote_dir) / local
    try:
        remote = entry.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return _fail(f"{local} is not a RemoteVM relayed by this qube (no {entry})")
    command = f"{caller} {remote} {service}+{arg}"
    try:
        ssh = subprocess.Popen(ssh_argv(config_dir, local, command))
    except OSError as err:
        return _fail(f"cannot run ssh: {err}")
    # the agent's end of our stdout must see EOF when ssh closes it: let go of our copy;
    # the agent closes our stdin outright only when the caller went away
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    status = watch(ssh, 0)
    if status == SSH_FAILED:
        return _fail(f"ssh to {local} failed (host unreachable, host key unknown or "
                     "changed, key refused, or the connection was lost)")
    return status


if __name__ == "__main__":
    sys.exit(main(Environment.current()))
