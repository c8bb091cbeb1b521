"""qrexec-host with real processes, in plain mode and in bubblewrap sandboxes."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pyqrexec.qubesd.client import QubesdError

from .fixtures.host import BWRAP, BWRAP_WHY, HostWorld, python_in_domain, service
from .fixtures.processes import wait_for


def ensure_halted(host_world: HostWorld, name: str) -> None:
    if host_world.domains()[name]["state"] != "Halted":
        assert host_world.host("stop", name).returncode == 0


def test_list_start_stop(host_world: HostWorld) -> None:
    ensure_halted(host_world, "other")
    out = host_world.host("list").stdout.decode().splitlines()
    assert out[0].split() == ["NAME", "TYPE", "STATE", "DOMID", "LABEL"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert rows["dom0"] == ["dom0", "AdminVM", "Running", "0", "black"]
    assert rows["work"][2] == "Running"  # autostart
    assert rows["other"][1:] == ["AppVM", "Halted", "-", "red"]
    assert host_world.host("start", "other").returncode == 0
    other = host_world.domains()["other"]
    assert other["state"] == "Running" and isinstance(other["domid"], int)
    assert (host_world.state / "qubes" / "qrexec.other").exists()
    again = host_world.host("start", "other")
    assert again.returncode == 1 and b"QubesVMNotHaltedError" in again.stderr
    assert host_world.host("stop", "other").returncode == 0
    assert host_world.domains()["other"]["state"] == "Halted"
    assert not (host_world.state / "qubes" / "qrexec.other").exists()
    assert not (host_world.state / "dom" / "other").exists()


def test_qubesd_answers(host_world: HostWorld) -> None:
    ensure_halted(host_world, "other")
    work_uuid = json.loads(host_world.qubesd("internal.GetSystemInfo", internal=True))[
        "domains"]["work"]["uuid"]
    assert host_world.raw(f"admin.vm.Start+ dom0 name uuid:{work_uuid}\0".encode()) == (
        b"2\0QubesVMNotHaltedError\0\0Domain is running: work\0")
    assert host_world.raw(b"admin.vm.Kill+ dom0 name other\0") == (
        b"2\0QubesVMNotStartedError\0\0Domain is powered off: other\0")
    assert host_world.raw(b"admin.vm.Frobnicate+ dom0 name work\0") == (
        b"2\0QubesException\0\0unsupported method\0")
    assert host_world.raw(b"admin.vm.Start+ dom0 name nosuch\0").startswith(
        b"2\0QubesVMNotFoundError\0\0")
    assert host_world.raw(b"admin.vm.CreateDisposable+ dom0 name work\0").startswith(
        b"2\0QubesException\0\0")
    assert host_world.raw(b"admin.vm.Start+ dom0 keyword adminvm\0").startswith(
        b"2\0QubesVMNotHaltedError\0")
    info = json.loads(host_world.qubesd("internal.GetSystemInfo", internal=True))["domains"]
    assert set(info) == {"dom0", "work", "vault", "other", "dvm"}
    assert info["dom0"]["uuid"] == "00000000-0000-0000-0000-000000000000"
    assert info["dom0"]["default_dispvm"] == "dvm" and info["work"]["default_dispvm"] == "dvm"
    assert info["work"]["tags"] == ["work"] and info["work"]["power_state"] == "Running"
    assert info["vault"]["label"] == "0x000000" and info["work"]["icon"] == "appvm-red"
    assert info["dvm"]["template_for_dispvms"] is True
    assert all("root" not in d and "user" not in d for d in info.values())
    # internal methods only on the internal socket, admin methods only on the other
    assert host_world.raw(b"internal.GetSystemInfo+ dom0 name dom0\0").startswith(b"2\0")
    created = host_world.qubesd("admin.vm.CreateDisposable", "dvm", payload=b"uuid").decode()
    assert created.startswith("uuid:") and len(created) == 41
    name = next(n for n, d in host_world.domains().items() if d["uuid"] == created[5:])
    assert name.startswith("disp") and host_world.domains()[name]["type"] == "DispVM"
    with pytest.raises(QubesdError):  # never started: the kill still removes it
        host_world.qubesd("admin.vm.Kill", created)
    assert name not in host_world.domains()
    assert not (host_world.state / "disp" / name).exists()


def test_run_passes_streams_and_status(host_world: HostWorld) -> None:
    done = host_world.host("run", "work", "--", "sh", "-c", "read x; echo got $x; exit 7",
                      input=b"hello\n")
    assert done.returncode == 7, done.stderr
    assert done.stdout == b"got hello\n"
    done = host_world.host("run", "work", "--", "echo hi >&2; exit 0")
    assert done.returncode == 0 and b"hi" in done.stderr


def test_call_vm_to_vm_with_autostart(host_world: HostWorld) -> None:
    ensure_halted(host_world, "other")
    done = host_world.host("call", "work", "other", "test.Echo", input=b"ping\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("service in ") and "from work as root" in lines[0]
    assert lines[1] == "ping"
    assert host_world.domains()["other"]["state"] == "Running"  # autostarted by the call


def test_qubes_find_qrexec_client_vm_by_name(host_world: HostWorld) -> None:
    """Services and commands in a sandbox call `qrexec-client-vm` by name, as on Qubes: it
    (and the policy tools) is at upstream's /usr/bin path unless the root brings its own."""
    if host_world.sandbox != "bubblewrap":
        # a root agent's login shell takes PATH from the host's profile, and this host's
        # Python may not be one a non-root domain user can run (here: under /root)
        pytest.skip("plain domains find qrexec's programs only through their agent's PATH")
    chain = "#!/bin/sh\nexec qrexec-client-vm work test.Echo\n"
    service(host_world.dir / "vault", "test.Chain", chain)  # vault's services run as nobody
    done = host_world.host("run", "vault", "--", "QUBESRPC test.Chain dom0", input=b"")
    assert (done.returncode, done.stderr) == (126, b"Request refused\n")  # found; denied
    done = host_world.host("run", "work", "--", "command -v qrexec-client-vm qubes-policy")
    assert done.stdout == b"/usr/bin/qrexec-client-vm\n/usr/bin/qubes-policy\n", done.stderr
    done = host_world.host("run", "work", "--", "qrexec-client-vm vault test.Echo", input=b"hi\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [b"hi"]


def test_call_to_a_non_root_agent(host_world: HostWorld) -> None:
    done = host_world.host("call", "work", "vault", "test.Echo", input=b"x\n")
    assert done.returncode == 0, done.stderr
    assert b"from work as nobody" in done.stdout


def test_call_denied(host_world: HostWorld) -> None:
    done = host_world.host("call", "other", "work", "test.Echo", input=b"")
    assert done.returncode == 126
    assert b"Request refused" in done.stderr


@pytest.mark.parametrize("target", ["@dispvm", "@dispvm:dvm"])
def test_dispvm_call(host_world: HostWorld, target: str) -> None:
    done = host_world.host("call", "work", target, "test.Echo", input=b"d\n")
    assert done.returncode == 0, done.stderr
    assert b"from work" in done.stdout
    if host_world.sandbox == "bubblewrap":
        assert done.stdout.startswith(b"service in disp")
    # the caller's daemon kills the disposable once the call's port is released
    wait_for(lambda: not [n for n in host_world.domains() if n.startswith("disp")], 10,
             "the disposable to go")


def _leftovers(host_world: HostWorld, before: set[int]) -> list[str]:
    """Everything that shows a disposable or a domain that is not running.

    The host is still tearing disposables down while this looks, so a directory listed a
    moment ago may be gone: that counts as nothing left in it, and the next look decides.
    """
    def listdir(path: Path) -> list[str]:
        try:
            return os.listdir(path)
        except FileNotFoundError:
            return []

    domains = host_world.domains()
    found = [n for n in domains if n.startswith("disp")]
    found += [f"disp/{p}" for p in listdir(host_world.state / "disp")]
    running = {str(d["domid"]) for d in domains.values() if d["domid"] is not None}
    found += [f"vchan/{p}" for p in listdir(host_world.state / "vchan") if p not in running]
    for view in running:
        found += [f"vchan/{view}/{p}" for p in listdir(host_world.state / "vchan" / view)
                  if p not in running]
    names = set(domains)
    found += [f"dom/{p}" for p in listdir(host_world.state / "dom") if p not in names]
    found += [f"qubes/{p}" for p in listdir(host_world.state / "qubes")
              if not any(p in (f"qrexec.{n}", f"qrexec.{d['domid']}", f"qrexec.uuid:{d['uuid']}")
                         for n, d in domains.items() if d["domid"] is not None)]
    found += [f"log/{p}" for p in listdir(host_world.state / "log") if "disp" in p]
    for pid in {int(p) for p in os.listdir("/proc") if p.isdigit()} - before:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if str(host_world.state).encode() in cmd and re.search(rb"\bdisp[0-9]+\b", cmd):
            found.append(f"process {pid}: {cmd!r}")
    return found


#: calls to new disposables, five at a time, by the client library inside a domain
#: (`agent first count`); prints [status, stdout, stderr] of each, in order
DISPOSABLE_CALLS = """\
import asyncio, json, sys
from pyqrexec.api import AsyncDomainClient
agent, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    qrexec = AsyncDomainClient(agent_socket=agent)
    five = asyncio.Semaphore(5)
    async def one(i):
        async with five:
            r = await qrexec.call("@dispvm", "test.Echo", input=b"%d\\n" % i, timeout=120)
        return [r.returncode, r.stdout.decode("latin-1"), r.stderr.decode("latin-1")]
    print(json.dumps(await asyncio.gather(*(one(i) for i in range(first, first + count)))))
asyncio.run(main())
"""


def test_fifty_disposables_leave_nothing(host_world: HostWorld) -> None:
    before = {int(p) for p in os.listdir("/proc") if p.isdigit()}

    def one(i: int) -> tuple[int, bytes, bytes]:
        done = host_world.host("call", "work", "@dispvm", "test.Echo", input=b"%d\n" % i)
        return done.returncode, done.stdout, done.stderr

    # five calls by `qrexec-host call` (qrexec-client-vm in work), then 45 by the client
    # library in one program in work: the disposables are the point, not the callers
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(one, range(5)))
    done = host_world.in_domain("work", [*python_in_domain(DISPOSABLE_CALLS), "{AGENT}", "5",
                                         "45"], timeout=240)
    assert done.returncode == 0, done.stderr
    results += [(status, out.encode("latin-1"), err.encode("latin-1"))
                for status, out, err in json.loads(done.stdout)]
    assert len(results) == 50
    failed = [i for i, (status, _, _) in enumerate(results) if status != 0]
    if failed:
        logs = [line for line in (host_world.dir / "up.log").read_text().splitlines()
                if "started" not in line and "halted" not in line]
        logs += [line for line in (host_world.state / "log" / "qrexec.work.log").read_text()
                 .splitlines() if "allowed" not in line and "executed" not in line]
        raise AssertionError(f"calls {failed} failed:\n" + "\n".join(logs[-40:]))
    for i, (status, out, err) in enumerate(results):
        assert status == 0, err
        assert out.endswith(b"%d\n" % i)
    try:
        wait_for(lambda: not _leftovers(host_world, before), 20, "disposables to vanish")
    except AssertionError:
        assert _leftovers(host_world, before) == []


@pytest.fixture(scope="module")
def sandboxed() -> Iterator[HostWorld]:
    if BWRAP is None:
        pytest.skip(f"bubblewrap unusable: {BWRAP_WHY}")
    w = HostWorld("bubblewrap").up()
    try:
        assert w.host("start", "vault").returncode == 0
        yield w
    finally:
        w.close()


PROBE = """
import os, socket, stat, sys
for path in sys.argv[1:]:
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISSOCK(mode):
            socket.socket(socket.AF_UNIX).connect(path)
        elif stat.S_ISDIR(mode):
            os.listdir(path)
        else:
            open(path).read()
        print("REACHED", path)
    except OSError as err:
        print("blocked", path, err.errno)
"""


def test_sandbox_hides_other_roots_and_sockets(sandboxed: HostWorld) -> None:
    w = sandboxed
    vault_domid = w.domains()["vault"]["domid"]
    targets = [
        str(w.dir / "vault" / "secret"),  # another domain's root, at its host path
        str(w.dir / "vault"),
        str(w.dir / "dvm" / "secret"),
        str(w.state / "dom" / "vault" / "run" / "qrexec-agent"),  # vault's trigger socket
        str(w.state / "qubes" / "qrexec.vault"),  # vault's daemon socket
        str(w.state / "qubes" / "qrexec.work"),  # even its own daemon's socket
        str(w.state / "qubesd.sock"),
        str(w.state / "policy.sock"),
        str(w.state / "vchan" / "0" / str(vault_domid)),  # the dom0 <-> vault pair
        f"/run/vchan/../{vault_domid}",
    ]
    done = w.host("run", "work", "--", *python_in_domain(PROBE), *targets)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == len(targets)
    assert all(line.startswith("blocked") for line in lines), lines
    # what the domain does see: its own root at the upstream paths, its own sockets
    own = w.host("run", "vault", "--", "sh", "-c",
                 "ls /etc/qubes-rpc; cat /run/qubes-root/secret; ls /run/qubes; "
                 "ls /run/vchan")
    assert own.returncode == 0, own.stderr
    text = own.stdout.decode().split()
    assert "test.Echo" in text and "qrexec-agent" in text and "0" in text
    assert "secret of vault" in own.stdout.decode()
    # the root's usr/bin joins the host's: its programs and the host's both run
    tool = w.host("run", "work", "--", "sh", "-c", "/usr/bin/our_test_client; ls /usr/bin/env")
    assert tool.stdout == b"client of work\n/usr/bin/env\n", tool.stderr
    assert w.host("run", "vault", "--", "test -e /usr/bin/our_test_client").returncode == 1


def test_sandbox_root_cannot_mount_or_make_devices(sandboxed: HostWorld) -> None:
    done = sandboxed.host("run", "work", "--", "sh", "-c",
                          "mount -t tmpfs x /tmp 2>/dev/null && echo MOUNTED; "
                          "mknod /tmp/disk b 8 0 2>/dev/null && echo MKNOD; "
                          "grep CapEff /proc/self/status")
    assert b"MOUNTED" not in done.stdout and b"MKNOD" not in done.stdout, done.stdout
    # a root agent can still switch to the requested user (nobody's login shell, nologin,
    # refuses the command: exit 1 without a permission error)
    done = sandboxed.host("run", "-u", "nobody", "work", "--", "id -un")
    assert done.returncode == 1 and b"not permitted" not in done.stdout + done.stderr, done


def test_sandbox_has_own_pid_and_network_namespace(sandboxed: HostWorld) -> None:
    done = sandboxed.host("run", "work", "--", "sh", "-c",
                          "ls /proc | grep -c '^[0-9]'; cat /proc/net/dev | tail -n +3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert int(lines[0]) < 15  # only the sandbox's few processes
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["lo"]


def test_bad_config_is_reported_with_its_line() -> None:
    w = HostWorld("plain")
    try:
        w.config.write_text("[domains.work]\nlabel = \"pink\"\n")
        done = w.host("up", "--sandbox=plain")
        assert done.returncode == 1
        assert done.stderr.decode() == (
            f"qrexec-host: {w.config}:2: domain work: unknown label 'pink' "
            "(one of red, orange, yellow, green, gray, blue, purple, black or 0xRRGGBB)\n")
        assert not (w.state / "qubesd.sock").exists()
    finally:
        w.close()
