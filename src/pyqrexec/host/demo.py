"""The embedded default host and the classic `test.Add` example of upstream's qrexec
HOWTO (`qrexec-host demo`).

Writes a config and the domains' roots into a fresh directory: `work` (running),
`anotherVM` (halted, started by the call), `default-dvm` (a disposable template), and dom0
with the legacy per-service policy file `test.Add` (`$anyvm $anyvm ask`) behind the shipped
`35-compat.policy`. The call `work -> anotherVM test.Add 11 22` then asks the person at the
terminal (or the `--yes` answer program) and prints 33.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

__all__ = ["write_demo", "ANSWER_YES", "CALL"]

#: the HOWTO's call, as `qrexec-host call` arguments
CALL = ["work", "anotherVM", "test.Add", "/usr/bin/our_test_add_client", "11", "22"]

#: `--answer-program` for `--yes`: allow the call to the target the demo asks for
ANSWER_YES = "#!/bin/sh\ncat >/dev/null\necho allow:anotherVM\n"

_FILES: dict[str, tuple[str, int]] = {
    # the HOWTO's example, as upstream documented it in 2015
    "roots/anotherVM/etc/qubes-rpc/test.Add": (
        "#!/bin/sh\n# read from stdin, which is received from the rpc client\n"
        "read arg1 arg2\n# print to stdout, which is passed to the rpc client\n"
        "echo $(($arg1+$arg2))\n", 0o755),
    "roots/work/usr/bin/our_test_add_client": (
        "#!/bin/sh\n# pass data to the rpc server\necho $1 $2\n"
        "# print the result to the original stdout, not to the other rpc endpoint\n"
        "exec cat >&$SAVED_FD_1\n", 0o755),
    "roots/default-dvm/etc/qubes-rpc/test.Add": (
        "#!/bin/sh\nread arg1 arg2\necho $(($arg1+$arg2))\n", 0o755),
    # dom0: the legacy per-service policy, read through the shipped compat file
    "roots/dom0/etc/qubes-rpc/policy/test.Add": ("$anyvm $anyvm ask\n", 0o644),
    "roots/dom0/etc/qubes/policy.d/35-compat.policy": (
        "# read the per-service files of /etc/qubes-rpc/policy (Qubes 4.0 format)\n"
        "!compat-4.0\n", 0o644),
}


def _config(user: str | None) -> str:
    who = f'user = "{user}"\n' if user else ""
    return f"""\
# The embedded default of `qrexec-host demo`.
[domains.dom0]
root = "roots/dom0"
default_dispvm = "default-dvm"

[domains.work]
type = "AppVM"
root = "roots/work"
label = "red"
autostart = true
{who}
[domains.anotherVM]
type = "AppVM"
root = "roots/anotherVM"
label = "green"
autostart = false
{who}
[domains.default-dvm]
type = "AppVM"
root = "roots/default-dvm"
label = "gray"
template_for_dispvms = true
autostart = false
{who}"""


def write_demo(directory: Path) -> Path:
    """Lay out the demo under `directory`; returns the config file's path."""
    for rel, (text, mode) in _FILES.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    (directory / "roots" / "dom0" / "etc" / "qubes-rpc").mkdir(parents=True, exist_ok=True)
    # as root the agents switch users per call (root); otherwise they run as the caller
    user = None if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    config = directory / "qrexec-host.toml"
    config.write_text(_config(user))
    answer = directory / "answer-yes"
    answer.write_text(ANSWER_YES)
    answer.chmod(0o755)
    return config
