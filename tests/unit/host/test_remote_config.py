"""RemoteVM domains in qrexec-host's TOML file, their system info and power state."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pyqrexec.host.config import ConfigError, parse
from pyqrexec.host.manager import Manager
from pyqrexec.host.relays import write_remote_entries
from pyqrexec.qubesd.server import HostError

GOOD = """\
[domains.relay]
[domains.work]
[domains.vault-b]
type = "RemoteVM"
relayvm = "relay"
remote_name = "vault"
tags = ["far"]
[domains.other-b]
type = "RemoteVM"
relayvm = "relay"
transport_rpc = "my.Transport"
"""


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    for name in ("relay", "work"):
        (tmp_path / name).mkdir(exist_ok=True)
    path = tmp_path / "host.toml"
    path.write_text(text)
    return parse(text, path)


def test_remote_domains_and_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, GOOD)
    v = cfg.domains["vault-b"]
    assert (v.type, v.relayvm, v.transport_rpc, v.remote_name) == (
        "RemoteVM", "relay", "qubesair.SSHProxy", "vault")
    assert v.limits is None and v.guivm is None and not v.autostart
    o = cfg.domains["other-b"]
    assert (o.transport_rpc, o.remote_name) == ("my.Transport", "other-b")
    assert cfg.domains["work"].relayvm is None


@pytest.mark.parametrize(("text", "line", "words"), [
    ('[domains.relay]\n[domains.x]\ntype = "RemoteVM"\nrelayvm = "nosuch"\n', 4,
     "unknown domain 'nosuch'"),
    ('[domains.x]\ntype = "RemoteVM"\nrelayvm = "dom0"\n', 3, "AdminVM, not a local qube"),
    ('[domains.relay]\n[domains.y]\ntype = "RemoteVM"\nrelayvm = "relay"\n'
     '[domains.x]\ntype = "RemoteVM"\nrelayvm = "y"\n', 7, "RemoteVM, not a local qube"),
    ('[domains.x]\ntype = "RemoteVM"\nrelayvm = "x"\n', 3, "its own relay"),
    ('[domains.relay]\n[domains.x]\ntype = "RemoteVM"\nrelayvm = "relay"\nroot = "x"\n', 5,
     "'root' is not a property of a RemoteVM"),
    ('[domains.relay]\n[domains.x]\ntype = "RemoteVM"\nrelayvm = "relay"\n'
     'autostart = true\n', 5, "not a property of a RemoteVM"),
    ('[domains.relay]\n[domains.x]\ntype = "RemoteVM"\nrelayvm = "relay"\n'
     'remote_name = "a b"\n', 4, "invalid characters"),
    ('[domains.relay]\n[domains.x]\ntype = "RemoteVM"\nrelayvm = "relay"\n'
     'transport_rpc = "a+b"\n', 4, "not a service name"),
    ('[domains.relay]\n[domains.x]\ntype = "RemoteVM"\nrelayvm = 3\n', 4,
     "relayvm must be of type str"),
    ('[domains.relay]\nrelayvm = "work"\n', 2, "RemoteVMs only"),
])
def test_remote_errors(tmp_path: Path, text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'host.toml'}:{line}: "), msg
    assert words in msg, msg


def test_system_info_tags_and_power(tmp_path: Path) -> None:
    manager = Manager(load(tmp_path, GOOD), tmp_path / "state", None, env={},
                      log=lambda _: None)
    info = manager.methods.system_info()["domains"]
    assert isinstance(info, dict)
    assert info["vault-b"] == {
        "type": "RemoteVM", "tags": ["far", "relayvm-relay"],
        "uuid": manager.config.domains["vault-b"].uuid, "default_dispvm": None,
        "template_for_dispvms": False, "power_state": "Running", "label": "0xcc0000",
        "icon": "appvm-red", "guivm": None, "relayvm": "relay",
        "transport_rpc": "qubesair.SSHProxy", "internal": None}
    assert (info["work"]["relayvm"], info["work"]["transport_rpc"]) == (None, None)
    assert info["relay"]["power_state"] == "Halted"

    async def power(method: str) -> str:
        try:
            await manager.methods.handle(method, "", "vault-b", b"", internal=False)
        except HostError as err:
            return f"{err.exc_type}: {err.message}"
        return "ok"

    for method in ("admin.vm.Start", "admin.vm.Kill", "admin.vm.Shutdown"):
        answer = asyncio.run(power(method))
        assert answer.startswith("QubesVMError: vault-b is a RemoteVM"), answer


def test_remote_entries(tmp_path: Path) -> None:
    cfg = load(tmp_path, GOOD)
    write_remote_entries(tmp_path, "relay", cfg.domains.values())
    assert (tmp_path / "remote/vault-b").read_text() == "vault"
    assert (tmp_path / "remote/other-b").read_text() == "other-b"
    write_remote_entries(tmp_path / "work", "work", cfg.domains.values())
    assert not (tmp_path / "work/remote").exists()
