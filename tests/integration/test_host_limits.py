"""Per-domain limits (docs/qrexec-host.md "Limits"): one domain cannot take the machine.

A fork bomb and a memory hog run inside domain `a` (through `qrexec-host run a -- ...`, i.e.
started by a's own agent, as any service would be) while `b` keeps answering calls. Both
attacks are bounded, so that a host without limits fails the test instead of the machine:
the bomb tries a fixed number of forks and its children wait on a pipe, the hog allocates up
to a fixed amount, and each takes SIGALRM after a minute.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .fixtures.host import HostWorld, roots, service
from .fixtures.processes import PYTHON, wait_for

A_PROCESSES = 40
A_MEMORY_MIB = 128
#: well above a's limits: a host without them lets the attack run to the end
BOMB_FORKS = 300
HOG_MIB = 512
#: what "B keeps working" means: a call answered within this many seconds
B_ANSWERS_WITHIN = 10.0

CONFIG = f"""\
[host]
max_processes = 256

[domains.a]
autostart = true
max_processes = {A_PROCESSES}
memory = "{A_MEMORY_MIB}M"

[domains.au]
autostart = true
user = "nobody"
max_processes = {A_PROCESSES}
memory = "{A_MEMORY_MIB}M"

[domains.b]
autostart = true

[domains.c]
autostart = true
"""

BOMB = f"""\
import os, signal, sys
signal.alarm(60)
r, w = os.pipe()
forked = failed = 0
for _ in range({BOMB_FORKS}):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    forked += 1
print("forked", forked, "failed", failed, flush=True)
sys.stdin.read()
os.close(w)
"""

HOG = f"""\
import signal
signal.alarm(60)
chunks = []
for step in range({HOG_MIB // 16}):
    chunks.append(b"x" * (16 << 20))
    print("allocated", (step + 1) * 16, flush=True)
print("hog done", flush=True)
"""


def layout(top: Path) -> str:
    roots(top, ("dom0", "a", "au", "b", "c"), "test.Echo * b c allow\ntest.Echo * a c allow\n")
    service(top / "c", "test.Echo", "#!/bin/sh\necho echo from c\n")
    return CONFIG


pytestmark = pytest.mark.host_world(layout=layout)


def b_works(host_world: HostWorld) -> float:
    """dom0 runs a command in b, and b calls a service of c; how long both took."""
    began = time.monotonic()
    run = host_world.host("run", "b", "--", "echo", "b is alive", timeout=60)
    assert (run.returncode, run.stdout) == (0, b"b is alive\n"), run.stderr
    call = host_world.host("call", "b", "c", "test.Echo", timeout=60)
    assert (call.returncode, call.stdout) == (0, b"echo from c\n"), call.stderr
    return time.monotonic() - began


#: the attacker's domain: its agent as root, or as an unprivileged account
ATTACKERS = ["a", "au"]


def skip_unusable(host_world: HostWorld, a: str) -> None:
    if a == "au" and host_world.sandbox == "plain" and sys.prefix.startswith("/root/"):
        # plain domains share the host's files: nobody cannot run a Python below /root
        pytest.skip("this host's Python is out of an unprivileged plain domain's reach")


@pytest.mark.parametrize("a", ATTACKERS)
def test_fork_bomb_in_a_stops_at_its_limit_and_b_keeps_working(host_world: HostWorld,
                                                                a: str) -> None:
    skip_unusable(host_world, a)
    bomb = subprocess.Popen(host_world.argv("run", a, "--", PYTHON, "-c", BOMB),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=host_world.env())
    assert bomb.stdin is not None and bomb.stdout is not None
    try:
        # the bomb holds every child it got until its stdin closes (or its alarm rings)
        said = bomb.stdout.readline().decode()
        assert said.startswith("forked "), (said, bomb.stderr and bomb.stderr.read())
        forked = int(said.split()[1])
        assert 0 < forked < A_PROCESSES, said
        took = b_works(host_world)
        assert took < B_ANSWERS_WITHIN, f"b answered in {took:.1f} s under a's fork bomb"
    finally:
        bomb.stdin.close()
        bomb.wait(90)
    assert host_world.domains()[a]["state"] == "Running"


@pytest.mark.parametrize("a", ATTACKERS)
def test_memory_hog_in_a_is_killed_and_b_keeps_working(host_world: HostWorld, a: str) -> None:
    skip_unusable(host_world, a)
    hog = subprocess.Popen(host_world.argv("run", a, "--", PYTHON, "-c", HOG),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=host_world.env())
    try:
        took = b_works(host_world)
        out, err = hog.communicate(timeout=90)
    finally:
        if hog.poll() is None:
            hog.kill()
            hog.wait()
    lines = out.decode().splitlines()
    assert "hog done" not in lines, f"a's hog got all its {HOG_MIB} MiB"
    reached = int(lines[-1].split()[1]) if lines else 0
    assert reached < A_MEMORY_MIB, lines[-3:]
    assert hog.returncode != 0, err
    assert took < B_ANSWERS_WITHIN, f"b answered in {took:.1f} s beside a's memory hog"
    # the OOM killer chose the hog, not a's agent: a still serves calls
    again = host_world.host("run", a, "--", "echo", "a is alive", timeout=60)
    assert (again.returncode, again.stdout) == (0, b"a is alive\n"), again.stderr


def test_program_of_call_is_bounded_by_its_domain(host_world: HostWorld) -> None:
    """`qrexec-host call a ...` runs its local program as a's: inside a's cgroups, so a
    bomb started that way meets a's limit too; dom0's daemon stays outside them."""
    done = host_world.host("call", "a", "c", "test.Echo", "/bin/sh", "-c",
                      "cat /proc/self/cgroup >&2; cat >&2")
    assert done.returncode == 0, done.stderr
    err = done.stderr.decode()
    assert "echo from c" in err
    pids = re.search(r"^\d+:pids:(.*)$", err, re.MULTILINE)
    assert pids is not None and re.search(r"/qrexec-host-[0-9a-f]{12}/a$", pids.group(1)), err
    daemon = daemon_pid(host_world, "a")
    assert "qrexec-host-" not in Path(f"/proc/{daemon}/cgroup").read_text()


def daemon_pid(host_world: HostWorld, name: str) -> int:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pyqrexec.cli.qrexec_daemon" in argv and f"--socket-dir={host_world.socket_dir}".encode(
                ) in argv and name.encode() in argv:
            return int(pid)
    raise AssertionError(f"no daemon of {name}")


def test_stopping_a_domain_kills_what_left_its_process_group(host_world: HostWorld) -> None:
    """A plain domain's agent is a process group; a service that starts its own session is
    out of it, but not out of the domain's cgroup: stopping the domain ends it as well."""
    if host_world.sandbox != "plain":
        pytest.skip("a sandbox's PID namespace ends with its first process anyway")
    run = host_world.host("run", "a", "--", "setsid sleep 120 </dev/null >/dev/null 2>&1 & echo $!")
    assert run.returncode == 0, run.stderr
    pid = int(run.stdout)
    # setsid execs sleep in the background: $! may name it a moment before that
    wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"), 10,
             "setsid to exec sleep")
    assert os.getsid(pid) == pid
    try:
        assert host_world.host("stop", "a").returncode == 0
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the escaped sleep to end")
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, 9)
        assert host_world.host("start", "a").returncode == 0
