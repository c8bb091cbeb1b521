"""`qrexec-host remote …` (docs/remote.md): the OpenSSH trust between two hosts' relays.

- `init RELAY`: the relay's key and ssh files under its root's `etc/qubesair/`, and the
  transport service `etc/qubes-rpc/qubesair.SSHProxy`; prints the public key line for the
  other host's administrator.
- `connect RELAY REMOTEVM --host H [--port P] [--user U] --host-key KEY`: how the relay
  reaches the host of RemoteVM REMOTEVM (an ssh `Host REMOTEVM` block, its host key pinned).
- `allow RELAY --key 'TYPE BASE64 [COMMENT]' --sources A,B`: on the receiving host, one
  `authorized_keys` entry `restrict,command=…` whose forced command is `accept`, pinned to
  the RemoteVMs A, B (each must be a RemoteVM whose relayvm is RELAY).
- `accept RELAY --sources A,B`: the forced command itself (run by sshd, never by hand):
  checks `SSH_ORIGINAL_COMMAND` (forced.py), then runs `qrexec-client-vm --source-qube=SOURCE
  TARGET SERVICE` inside RELAY, so that this host's policy decides again.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from ..host.cgroups import join
from ..host.config import ConfigError, HostConfig, load, validate_name
from ..host.launchers import program
from ..host.sandbox import source_dir
from ..qubesd.client import QubesdError, call
from ..system.environment import Environment
from .forced import Refused, parse_original_command
from .watch import watch

__all__ = ["add_arguments", "run"]

SERVICE = "qubesair.SSHProxy"
#: a refused call ends as a policy refusal does
REFUSED = 126
_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
              "ecdsa-sha2-nistp521", "ssh-rsa", "sk-ssh-ed25519@openssh.com",
              "sk-ecdsa-sha2-nistp256@openssh.com")
_HOST_RE = re.compile(r"[A-Za-z0-9_.:-]{1,253}|\[[0-9A-Fa-f:.]+\]")


class RemoteError(Exception):
    """A set-up command's error: printed as `qrexec-host: remote: MESSAGE`, status 1."""


def add_arguments(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    remote = sub.add_parser("remote", help="calls across hosts over OpenSSH (docs/remote.md)")
    rsub = remote.add_subparsers(dest="remote_command", required=True)
    init = rsub.add_parser("init", help="the relay's ssh key and transport service; prints "
                           "the key line for the other host")
    init.add_argument("relay")
    conn = rsub.add_parser("connect", help="how RELAY reaches the host of REMOTEVM")
    conn.add_argument("relay")
    conn.add_argument("remotevm")
    conn.add_argument("--host", required=True, help="the other host's address or name")
    conn.add_argument("--port", type=int, default=22)
    conn.add_argument("--user", required=True, help="the account whose authorized_keys "
                      "holds this relay's entry there")
    conn.add_argument("--host-key", required=True, metavar="KEY",
                      help="the other sshd's public host key: 'TYPE BASE64'")
    allow = rsub.add_parser("allow", help="authorize another host's relay key to call "
                            "through RELAY, for its pinned sources only")
    allow.add_argument("relay")
    allow.add_argument("--key", required=True, help="the line `init` printed on the other host")
    allow.add_argument("--sources", required=True, metavar="A,B",
                       help="the RemoteVMs (relayvm = RELAY) this key may speak for")
    allow.add_argument("--authorized-keys", type=Path, default=None, metavar="FILE",
                       help="default ~/.ssh/authorized_keys")
    accept = rsub.add_parser("accept", help="(sshd's forced command) run the call the key "
                             "asks for, if it is pinned")
    accept.add_argument("relay")
    accept.add_argument("--sources", required=True, metavar="A,B")


def run(args: argparse.Namespace, state: Path, env: Environment) -> int:
    try:
        if args.remote_command == "accept":
            return _accept(args, state, env)
        config = _config(args)
        if args.remote_command == "init":
            print(_init(config, args.relay))
        elif args.remote_command == "connect":
            _connect(config, args)
        else:
            _allow(config, args, state)
    except RemoteError as err:
        print(f"qrexec-host: remote: {err}", file=sys.stderr)
        return 1
    return 0


def _config(args: argparse.Namespace) -> HostConfig:
    try:
        return load(args.config)
    except ConfigError as err:
        raise RemoteError(str(err)) from None


def _relay_root(config: HostConfig, relay: str) -> Path:
    d = config.domains.get(relay)
    if d is None or d.type in ("RemoteVM", "AdminVM"):
        raise RemoteError(f"{relay} is not a local qube of {config.path}")
    return d.root


def _init(config: HostConfig, relay: str) -> str:
    root = _relay_root(config, relay)
    air = root / "etc/qubesair"
    air.mkdir(parents=True, exist_ok=True)
    key = air / "id_ed25519"
    if not key.exists():
        comment = f"qubesair {relay}@{socket.gethostname()}"
        made = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                               "-f", str(key)], capture_output=True, text=True)
        if made.returncode != 0:
            raise RemoteError(f"ssh-keygen failed: {made.stderr.strip()}")
    for name in ("ssh_config", "known_hosts"):
        (air / name).touch()
    rpc = root / "etc/qubes-rpc"
    rpc.mkdir(parents=True, exist_ok=True)
    _write(rpc / SERVICE, _service_text(), 0o755)
    _own_like(root, [air, key, air / "ssh_config", air / "known_hosts"])
    return (air / "id_ed25519.pub").read_text().strip()


def _service_text() -> str:
    """The transport launcher: its config directory is found from its own path, which is the
    relay's root seen from inside the domain (sandbox) or from the host (plain)."""
    words = " ".join(shlex.quote(w) for w in (sys.executable, "-P", "-m",
                                               "pyqrexec.remote.sshproxy"))
    return ("#!/bin/sh\n"
            f"PYTHONPATH={shlex.quote(source_dir())}${{PYTHONPATH:+:$PYTHONPATH}}\n"
            "export PYTHONPATH\n"
            f'exec {words} --config-dir "$(dirname -- "$0")/../qubesair" "$@"\n')


def _own_like(root: Path, paths: list[Path]) -> None:
    """ssh refuses a key or config another account owns: give them to the root's owner."""
    st = root.stat()
    if os.geteuid() == 0:
        for path in paths:
            os.chown(path, st.st_uid, st.st_gid)


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_line(text: str) -> tuple[str, str, str]:
    """`TYPE BASE64 [COMMENT]`, each part checked: nothing of it may add key options."""
    parts = text.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in _KEY_TYPES or "\n" in text.strip():
        raise RemoteError("the key must be one line 'TYPE BASE64 [COMMENT]' "
                          f"(TYPE one of {', '.join(_KEY_TYPES)})")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise RemoteError("the key's base64 part is malformed") from None
    if not blob.startswith(len(parts[0]).to_bytes(4, "big") + parts[0].encode()):
        raise RemoteError("the key's base64 part is not a key of its type")
    comment = parts[2] if len(parts) > 2 else ""
    comment = re.sub(r"[^A-Za-z0-9_.@:+-]", "_", comment)
    return parts[0], parts[1], comment


def _connect(config: HostConfig, args: argparse.Namespace) -> None:
    root = _relay_root(config, args.relay)
    air = root / "etc/qubesair"
    if not (air / "id_ed25519").exists():
        raise RemoteError(f"run `qrexec-host remote init {args.relay}` first")
    remote = config.domains.get(args.remotevm)
    if remote is None or remote.type != "RemoteVM" or remote.relayvm != args.relay:
        raise RemoteError(f"{args.remotevm} is not a RemoteVM with relayvm {args.relay}")
    if not _HOST_RE.fullmatch(args.host) or args.host.startswith("-"):
        raise RemoteError(f"invalid host {args.host!r}")
    if not 0 < args.port < 65536:
        raise RemoteError(f"invalid port {args.port}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", args.user):
        raise RemoteError(f"invalid user {args.user!r}")
    key_type, key_blob, _ = _key_line(args.host_key)
    # one block per RemoteVM, the alias its name; the key and known_hosts files are given
    # by sshproxy.py, which knows where the relay sees them (plain or sandboxed)
    block = (f"Host {args.remotevm}\n"
             f"    HostName {args.host.strip('[]')}\n    Port {args.port}\n"
             f"    User {args.user}\n    HostKeyAlias qubesair-{args.remotevm}\n\n")
    _replace_block(air / "ssh_config", f"Host {args.remotevm}\n", block)
    known = [line for line in (air / "known_hosts").read_text().splitlines()
             if not line.startswith(f"qubesair-{args.remotevm} ")]
    known.append(f"qubesair-{args.remotevm} {key_type} {key_blob}")
    _write(air / "known_hosts", "\n".join(known) + "\n", 0o644)
    _own_like(root, [air / "ssh_config", air / "known_hosts"])


def _replace_block(path: Path, head: str, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    blocks = [b + "\n\n" for b in text.split("\n\n") if b.strip()]
    kept = [b for b in blocks if not b.startswith(head)]
    _write(path, "".join(kept) + block, 0o644)


def _allow(config: HostConfig, args: argparse.Namespace, state: Path) -> None:
    _relay_root(config, args.relay)
    sources = _sources(args.sources)
    for name in sources:
        d = config.domains.get(name)
        if d is None or d.type != "RemoteVM" or d.relayvm != args.relay:
            raise RemoteError(f"{name} is not a RemoteVM with relayvm {args.relay}")
    key_type, key_blob, comment = _key_line(args.key)
    command = " ".join(shlex.quote(w) for w in (
        "env", f"PYTHONPATH={source_dir()}", *program("qrexec-host"),
        f"--state-dir={state}", "remote", "accept", args.relay,
        f"--sources={','.join(sources)}"))
    if '"' in command or "\\" in command:
        raise RemoteError("paths with \" or \\ cannot be put in authorized_keys")
    line = f'restrict,command="{command}" {key_type} {key_blob} {comment}'.rstrip()
    path = args.authorized_keys or Path.home() / ".ssh" / "authorized_keys"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = path.read_text().splitlines() if path.exists() else []
    # the same key again replaces its entry: one key, one set of pinned sources
    kept = [entry for entry in old if f" {key_type} {key_blob}" not in f" {entry}"]
    _write(path, "\n".join([*kept, line]) + "\n", 0o600)


def _sources(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    if not names:
        raise RemoteError("--sources names no RemoteVM")
    for name in names:
        why = validate_name(name)
        if why:
            raise RemoteError(why)
    return names


def _accept(args: argparse.Namespace, state: Path, env: Environment) -> int:
    """sshd's forced command: refuse (126, one line) or become qrexec-client-vm in RELAY."""
    try:
        pins = _sources(args.sources)
        request = parse_original_command(env.ssh_original_command, pins)
    except (RemoteError, Refused) as err:
        print(f"qrexec-host: remote: refused: {err}", file=sys.stderr)
        return REFUSED
    sock = str(state / "qubesd.sock")
    try:
        try:
            call("admin.vm.Start", args.relay, path=sock)
        except QubesdError as err:
            if err.exc_type != "QubesVMNotHaltedError":
                raise
        spec = json.loads(call("pyqrexec.host.Exec", args.relay, path=sock))
    except (QubesdError, OSError, ValueError) as err:
        print(f"qrexec-host: remote: {args.relay}: {err}", file=sys.stderr)
        return 1
    argv = [*spec["prefix"], *program("qrexec-client-vm"),
            f"--agent-socket={spec['agent_socket']}", f"--source-qube={request.source}",
            "--", request.target, request.service]
    cgroup = spec.get("cgroup", [])
    try:
        proc = subprocess.Popen(argv, env=spec["env"], preexec_fn=lambda: join(cgroup))
    except (OSError, subprocess.SubprocessError) as err:
        print(f"qrexec-host: remote: cannot run {argv[0]}: {err}", file=sys.stderr)
        return 1
    # sshd closes our stdout's other end when the connection is gone
    return watch(proc, 1)
