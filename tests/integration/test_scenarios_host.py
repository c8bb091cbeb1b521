"""Calls with a small host manager: autostart (S7), autostart=no (S8) and
disposables (S10). A fake qubesd on `QUBESD_SOCKET` starts a real daemon and agent when the
daemon asks for `admin.vm.Start`, makes up a disposable for `admin.vm.CreateDisposable` and
stops it again on `admin.vm.Kill`."""

from __future__ import annotations

import itertools
import uuid as uuidlib
from collections.abc import Iterator

import pytest

from .fixtures.fakes import FakeServer
from .fixtures.hostile import socket_paths
from .fixtures.processes import Domain, QrexecHost, wait_for
from .fixtures.world import World

VAULT_UUID = "33333333-3333-3333-3333-333333333333"
DVM_UUID = "44444444-4444-4444-4444-444444444444"
SYS_USB_UUID = "55555555-5555-5555-5555-555555555555"

#: the policy of the scenarios: test.Svc to vault (autostart unless test.NoStart), to
#: sys-usb, and @dispvm / $dispvm to a disposable of default-dvm
POLICY = f"""#!/bin/sh
[ "$1" = "--" ] && shift
service="$3"
autostart=True
[ "$service" = test.NoStart+ ] || [ "$service" = test.NoStart ] && autostart=False
allow() {{
  printf 'user=DEFAULT\\nresult=allow\\ntarget=%s\\ntarget_uuid=%s\\n' "$1" "$2"
  printf 'autostart=%s\\nrequested_target=%s\\n' "$autostart" "$3"
}}
case "$2" in
  vault) allow vault uuid:{VAULT_UUID} vault ;;
  sys-usb) allow sys-usb uuid:{SYS_USB_UUID} sys-usb ;;
  @dispvm) allow @dispvm:default-dvm @dispvm:uuid:{DVM_UUID} @dispvm ;;
  *) echo result=deny ;;
esac
"""


class HostManager(FakeServer):
    """qubesd as far as qrexec-daemon uses it; records `(method, destination, payload)`."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.calls: list[tuple[str, str, bytes]] = []
        self.halted: dict[str, tuple[str, int]] = {}  # uuid -> (name, domid)
        self.killed: list[str] = []
        self.domids = itertools.count(20)
        super().__init__(str(world.host.root / "qubesd.sock"), self._respond)

    def _respond(self, data: bytes) -> bytes:
        header, _, payload = data.partition(b"\0")
        call, _dom0, _kind, dest = header.decode().split(" ")
        method = call.split("+", 1)[0]
        self.calls.append((method, dest, payload))
        uuid = dest.removeprefix("uuid:")
        if method == "admin.vm.Start":
            if uuid not in self.halted:
                return b"2\0QubesVMNotHaltedError\0\0Domain is running\0"
            name, domid = self.halted.pop(uuid)
            start_domain(self.world, name, domid, uuid)
            return b"0\0"
        if method == "admin.vm.CreateDisposable" and uuid == DVM_UUID and payload == b"uuid":
            new = str(uuidlib.uuid4())
            domid = next(self.domids)
            self.halted[new] = (f"disp{domid}", domid)
            return f"0\0uuid:{new}".encode()
        if method == "admin.vm.Kill":
            for dom in self.world.host.domains.values():
                if dom.uuid == uuid:
                    dom.stop()
                    self.killed.append(dom.name)
                    return b"0\0"
        return b"2\0QubesException\0\0unexpected call\0"

    def methods(self) -> list[tuple[str, str]]:
        return [(m, d) for m, d, _ in self.calls]


def start_domain(world: World, name: str, domid: int, uuid: str | None = None) -> Domain:
    dom = world.domain(name, domid, start=False)
    if uuid is not None:
        dom.uuid = uuid
    dom.daemon_env["QUBESD_SOCKET"] = str(world.host.root / "qubesd.sock")
    world.start(dom)
    # like qubesd, answer once the daemon is completely up (all three names exist)
    wait_for(lambda: all(p.exists() for p in socket_paths(dom)), 20, "daemon sockets")
    return dom


@pytest.fixture
def manager(host: QrexecHost) -> Iterator[HostManager]:
    world = World(host, policy=POLICY)
    m = HostManager(world)
    start_domain(world, "work", 5)
    marker = host.root / "ran-in"
    for vm in ("vault", "sys-usb", "disp20", "disp21"):
        for svc in ("test.Svc", "test.NoStart"):
            world.service(vm, svc, f'#!/bin/sh\necho "$QREXEC_REMOTE_DOMAIN -> {vm}"\n'
                          f"echo {vm} >> {marker}\n")
    yield m
    m.close()


def test_s7_autostart(manager: HostManager) -> None:
    w = manager.world
    manager.halted[VAULT_UUID] = ("vault", 7)
    r = w.call("work", "vault", "test.Svc")
    assert (r.returncode, r.stdout) == (0, b"work -> vault\n"), r.stderr
    assert manager.methods() == [("admin.vm.Start", f"uuid:{VAULT_UUID}")]
    vault = w.host.domains["vault"]
    assert vault.daemon is not None and vault.daemon.poll() is None
    # running now: no second start request
    assert w.call("work", "vault", "test.Svc").returncode == 0
    assert manager.methods() == [("admin.vm.Start", f"uuid:{VAULT_UUID}")]


def test_s8_autostart_no(manager: HostManager) -> None:
    w = manager.world
    manager.halted[VAULT_UUID] = ("vault", 7)
    r = w.call("work", "vault", "test.NoStart")
    assert (r.returncode, r.stderr) == (126, b"Request refused\n")
    assert manager.calls == []
    assert not (w.host.root / "ran-in").exists()
    start_domain(w, "sys-usb", 10, SYS_USB_UUID)
    r = w.call("work", "sys-usb", "test.NoStart")
    assert (r.returncode, r.stdout) == (0, b"work -> sys-usb\n"), r.stderr
    assert manager.calls == []


@pytest.mark.parametrize("target", ["@dispvm", "$dispvm"])
def test_s10_disposable(manager: HostManager, target: str) -> None:
    w = manager.world
    r = w.call("work", target, "test.Svc")
    assert (r.returncode, r.stdout) == (0, b"work -> disp20\n"), r.stderr
    wait_for(lambda: bool(manager.killed), 20, "the disposable killed")
    disp = w.host.domains["disp20"]
    assert manager.calls == [
        ("admin.vm.CreateDisposable", f"uuid:{DVM_UUID}", b"uuid"),
        ("admin.vm.Start", f"uuid:{disp.uuid}", b""),
        ("admin.vm.Kill", f"uuid:{disp.uuid}", b""),
    ]
    assert manager.killed == ["disp20"]
    assert disp.daemon is None and disp.agent is None
