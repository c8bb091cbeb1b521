"""The environment is read once, in `cli/`, into one `Environment` (docs/architecture.md#
environment-and-logging): the walk below fails on any other reader, and the rest pins how
each variable is parsed."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from pyqrexec.system import defaults
from pyqrexec.system.environment import Environment, c_atoi, split_dir_list

SRC = Path(__file__).resolve().parents[2] / "src" / "pyqrexec"
#: where the environment may be read: each program's entry module, and the object itself
READERS_ALLOWED = ("cli/", "system/environment.py",
                   # its own program, started as `python -I -S -c BOOT` by bubblewrap: it
                   # imports nothing of ours but itself and sets the user's HOME, USER and
                   # LOGNAME for the command it execs
                   "host/confine.py")
#: where `Environment.current()` may build one from this process: the programs, the client
#: library (Python programs that use it are its callers, there is no `cli/` above), and the
#: `qubesair.SSHProxy` service, a program started as `python -m pyqrexec.remote.sshproxy`
CURRENT_ALLOWED = ("cli/", "api/", "system/environment.py", "remote/sshproxy.py")
_OS_READERS = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def _allowed(relative: str, prefixes: tuple[str, ...]) -> bool:
    return relative.startswith(prefixes)


def environment_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """`os.environ` and friends, and `from os import environ`, in one module."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in _OS_READERS
                and isinstance(node.value, ast.Name) and node.value.id == "os"):
            found.append((node.lineno, f"os.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [(node.lineno, f"from os import {a.name}") for a in node.names
                      if a.name in _OS_READERS]
    return found


def current_calls(tree: ast.AST) -> list[int]:
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "current"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "Environment"]


def test_only_cli_reads_the_environment() -> None:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text(), str(path))
        if not _allowed(relative, READERS_ALLOWED):
            bad += [f"{relative}:{line}: {what}" for line, what in environment_reads(tree)]
        if not _allowed(relative, CURRENT_ALLOWED):
            bad += [f"{relative}:{line}: Environment.current()" for line in current_calls(tree)]
    assert not bad, "read the environment in cli/ and pass it down:\n" + "\n".join(bad)


def test_the_walk_finds_every_form() -> None:
    tree = ast.parse("import os\nfrom os import getenv\nos.environ.get('X')\n"
                     "os.environb[b'X']\nos.getenv('X')\nEnvironment.current()\n")
    assert sorted(environment_reads(tree)) == [
        (2, "from os import getenv"), (3, "os.environ"), (4, "os.environb"), (5, "os.getenv")]
    assert current_calls(tree) == [6]


def test_defaults() -> None:
    env = Environment({})
    assert env.service_path == tuple(defaults.SERVICE_PATH.split(":"))
    assert env.rpc_config_path[0] == "/run/qubes/rpc-config"
    assert env.vchan_socket_dir == "/var/run/vchan"
    assert (env.vchan_domain, env.vchan_pair_dirs) == (0, False)
    assert (env.max_protocol_version, env.max_protocol_warning) == (4, None)
    assert env.policy_socket == "/run/qubes/policy.sock"
    assert env.policy_dirs == ["/run/qubes/policy.d", "/etc/qubes/policy.d"]
    assert env.persistent_policy_dir == "/etc/qubes/policy.d"
    assert env.legacy_policy_dir == "/etc/qubes-rpc/policy"
    assert env.grants_path() == "/run/qubes/policy-grants.json"
    assert (env.qubesd_socket, env.qubesd_internal_socket) == (
        "/run/qubesd.sock", "/run/qubesd.internal.sock")
    assert (env.notify_socket, env.user, env.ssh_original_command) == (None, None, None)
    assert env.remote_domain == ""
    assert env.remote_dir == "/run/qubes/remote"
    assert env.path == os.defpath


def test_dir_lists() -> None:
    assert split_dir_list("a::b:") == ("a", "b")
    # set but empty: no directories at all, not the default
    assert Environment({"QREXEC_SERVICE_PATH": ""}).service_path == ()
    assert Environment({"QUBES_RPC_CONFIG_PATH": "/x"}).rpc_config_path == ("/x",)


def test_vchan_variables() -> None:
    env = Environment({"VCHAN_DOMAIN": " 12abc", "VCHAN_SOCKET_DIR": "",
                       "VCHAN_PAIR_DIRS": "1"})
    assert (env.vchan_domain, env.vchan_socket_dir, env.vchan_pair_dirs) == (
        12, "/var/run/vchan", True)
    assert not Environment({"VCHAN_PAIR_DIRS": ""}).vchan_pair_dirs
    assert [c_atoi(t) for t in ("", "x", "-3", "+7z", "\t 5")] == [0, 0, -3, 7, 5]


def test_max_protocol_version() -> None:
    assert Environment({"QREXEC_MAX_PROTOCOL_VERSION": "2"}).max_protocol_version == 2
    env = Environment({"QREXEC_MAX_PROTOCOL_VERSION": "9"})
    assert env.max_protocol_version == 4
    assert env.max_protocol_warning == "ignoring invalid QREXEC_MAX_PROTOCOL_VERSION='9'"


def test_policy_and_grants() -> None:
    env = Environment({"QREXEC_POLICY_DIR": "/p", "QREXEC_POLICY_SOCKET": "/s/policy.sock"})
    assert (env.policy_dirs, env.persistent_policy_dir) == (["/p"], "/p")
    assert env.grants_path() == "/s/policy-grants.json"
    assert env.grants_path("/o/x.sock") == "/o/policy-grants.json"
    assert Environment({"QREXEC_GRANTS_FILE": "/g"}).grants_path("/o/x.sock") == "/g"


def test_services_inherit_the_same_bytes() -> None:
    raw = os.fsdecode(b"\xff\xfe")
    env = Environment({"A": raw, "PATH": "/bin"})
    assert env.environb == {b"A": b"\xff\xfe", b"PATH": b"/bin"}
    assert Environment.current().environb == dict(os.environb)


def test_a_copy() -> None:
    variables = {"VCHAN_DOMAIN": "3"}
    env = Environment(variables)
    variables["VCHAN_DOMAIN"] = "4"
    assert env.variables == {"VCHAN_DOMAIN": "3"}
