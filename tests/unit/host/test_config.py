"""qrexec-host's TOML config: parsing, defaults and FILE:LINE errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqrexec.host.config import ConfigError, derived_uuid, parse, validate_name


def make(tmp_path: Path, text: str, roots: tuple[str, ...] = ("work", "dvm")) -> Path:
    for name in roots:
        (tmp_path / name).mkdir(exist_ok=True)
    path = tmp_path / "host.toml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, **kw: tuple[str, ...]):  # type: ignore[no-untyped-def]
    path = make(tmp_path, text, **kw)
    return parse(path.read_text(), path)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


GOOD = """\
[host]
sandbox = "plain"

[domains.dom0]
default_dispvm = "dvm"

[domains.work]
label = "blue"
tags = ["work", "x-1"]
autostart = true
user = "nobody"

[domains.dvm]
type = "AppVM"
root = "dvm"
template_for_dispvms = true
guivm = ""
uuid = "44444444-4444-4444-4444-444444444444"
"""


def test_good_file_and_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, GOOD)
    assert cfg.sandbox == "plain"
    assert list(cfg.domains) == ["dom0", "work", "dvm"]
    dom0, work, dvm = cfg.domains.values()
    assert dom0.type == "AdminVM" and dom0.uuid == "00000000-0000-0000-0000-000000000000"
    assert dom0.colour == "0x000000" and dom0.icon == "adminvm-black" and dom0.guivm is None
    assert work.type == "AppVM" and work.root == (tmp_path / "work").resolve()
    assert work.colour == "0x3465a4" and work.icon == "appvm-blue"
    assert work.tags == ("work", "x-1") and work.autostart
    assert work.default_dispvm == "dvm" and work.guivm == "dom0"
    assert work.user == "nobody" and work.default_user == "nobody"
    assert work.uuid == derived_uuid("work") == load(tmp_path, GOOD).domains["work"].uuid
    assert dvm.guivm is None and dvm.template_for_dispvms
    assert dvm.uuid == "44444444-4444-4444-4444-444444444444"
    assert dvm.default_user == "root" and dvm.user is None


def test_dom0_is_implicit(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[domains.work]\n")
    assert cfg.dom0.type == "AdminVM" and cfg.dom0.default_dispvm is None


@pytest.mark.parametrize("name", ["", "1abc", "a b", "x" * 32, "anyvm", "dispvm", "none",
                                  "default", "sys-dm", "a/b", "é"])
def test_invalid_names(name: str) -> None:
    assert validate_name(name) is not None


@pytest.mark.parametrize("name", ["work", "sys-usb", "a.b_c-d", "x" * 31, "A1"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) is None


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    msg = error(tmp_path, "[domains.work]\nlabel = \n")
    assert msg.startswith(f"{tmp_path / 'host.toml'}:2: ")


@pytest.mark.parametrize(("text", "line", "words"), [
    ("[domains.work]\nlabel = \"red\"\ncolour = 1\n", 3, "unknown key 'colour'"),
    ("[domains.work]\n\n[domains.anyvm]\n", 3, "reserved"),
    ('[domains."bad name"]\n', 1, "invalid characters"),
    ("[domains.work]\ntype = \"AdminVM\"\n", 2, "AdminVM"),
    ("[domains.dom0]\ntype = \"AppVM\"\n", 2, "AdminVM"),
    ("[domains.work]\ntype = \"RemoteVM\"\n", 2, "needs relayvm"),
    ("[domains.work]\ntype = \"Cloud\"\n", 2, "unknown type"),
    ("[domains.work]\nlabel = \"pink\"\n", 2, "unknown label"),
    ("[domains.work]\ntags = [\"a b\"]\n", 2, "invalid tag"),
    ("[domains.work]\nautostart = \"yes\"\n", 2, "autostart must be of type bool"),
    ("[domains.work]\n\n[domains.dvm]\ndefault_dispvm = \"work\"\n", 4,
     "does not have template_for_dispvms"),
    ("[domains.work]\nguivm = \"nosuch\"\n", 2, "unknown domain 'nosuch'"),
    ("[domains.work]\nroot = \"missing\"\n", 2, "does not exist"),
    ("\n[domains.ghost]\n", 2, "does not exist"),
    ("[domains.work]\nuuid = \"xyz\"\n", 2, "invalid uuid"),
    ("[domains.work]\nuuid = \"00000000-0000-0000-0000-000000000000\"\n", 2, "dom0's"),
    ("[host]\nsandbox = \"docker\"\n", 2, "sandbox must be"),
    ("[hosts]\n", 1, "unknown key 'hosts'"),
    ("[domains.work]\nuser = \"a:b\"\n", 2, "invalid user name"),
])
def test_semantic_errors_point_at_the_line(tmp_path: Path, text: str, line: int,
                                           words: str) -> None:
    msg = error(tmp_path, text)
    assert msg.startswith(f"{tmp_path / 'host.toml'}:{line}: "), msg
    assert words in msg
