from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from pyqrexec.protocol.cmdline import ServiceCall
from pyqrexec.services.lookup import (
    Entry,
    LookupFailure,
    ServiceKind,
    candidates,
    find_service,
    load_service_config,
)
from pyqrexec.services.rpcconfig import DEFAULT_CONFIG, ParsedConfig

Call = Callable[[bytes], ServiceCall]


def executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_candidate_order() -> None:
    paths = list(candidates(["/a", "/b"], [b"S+A", b"S"]))
    assert paths == [b"/a/S+A", b"/b/S+A", b"/a/S", b"/b/S"]


def test_long_names_are_skipped() -> None:
    assert list(candidates(["/a"], [b"x" * 256, b"S"])) == [b"/a/S"]


def test_argument_specific_before_general(call: Call, tmp_path: Path) -> None:
    first, second = tmp_path / "1", tmp_path / "2"
    first.mkdir()
    second.mkdir()
    executable(first / "test.Svc")
    specific = executable(second / "test.Svc+a1")
    dirs = [str(first), str(second)]
    found = find_service(call(b"QUBESRPC test.Svc+a1 src"), dirs)
    assert found == Entry(os.fsencode(specific), ServiceKind.EXECUTABLE)
    other = find_service(call(b"QUBESRPC test.Svc+b2 src"), dirs)
    assert isinstance(other, Entry) and other.path == os.fsencode(first / "test.Svc")


def test_no_argument_looks_up_plus_form_first(call: Call, tmp_path: Path) -> None:
    executable(tmp_path / "test.Svc")
    plus = executable(tmp_path / "test.Svc+")
    found = find_service(call(b"QUBESRPC test.Svc src"), [str(tmp_path)])
    assert isinstance(found, Entry) and found.path == os.fsencode(plus)


def test_not_found_is_127(call: Call, tmp_path: Path) -> None:
    found = find_service(call(b"QUBESRPC test.Foo src"), [str(tmp_path)])
    assert found == LookupFailure(127, "Service not found: test.Foo+")


def test_dangling_symlink_is_skipped(call: Call, tmp_path: Path) -> None:
    (tmp_path / "test.Svc+a").symlink_to(tmp_path / "missing")
    general = executable(tmp_path / "test.Svc")
    found = find_service(call(b"QUBESRPC test.Svc+a src"), [str(tmp_path)])
    assert isinstance(found, Entry) and found.path == os.fsencode(general)


def test_symlink_error_is_125(call: Call, tmp_path: Path) -> None:
    (tmp_path / "test.Svc+a").symlink_to("/dev/null/x")
    executable(tmp_path / "test.Svc")
    found = find_service(call(b"QUBESRPC test.Svc+a src"), [str(tmp_path)])
    assert isinstance(found, LookupFailure) and found.status == 125


def test_lstat_error_is_125(call: Call, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    found = find_service(call(b"QUBESRPC test.Svc src"), [str(tmp_path / "file")])
    assert isinstance(found, LookupFailure) and found.status == 125


def test_path_too_long_is_125(call: Call, tmp_path: Path) -> None:
    directory = str(tmp_path) + "/" + "d" * (1024 - len(str(tmp_path)))
    found = find_service(call(b"QUBESRPC test.Svc src"), [directory])
    assert isinstance(found, LookupFailure) and found.status == 125


def test_kinds(call: Call, tmp_path: Path) -> None:
    (tmp_path / "tcp").symlink_to("/dev/tcp/127.0.0.1/1")
    (tmp_path / "plain").write_text("")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "sock")
    os.mkfifo(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "sock"))
        dirs = [str(tmp_path)]
        kinds = {}
        for name in ("tcp", "sock", "link", "dir"):
            found = find_service(call(b"QUBESRPC " + name.encode() + b" src"), dirs)
            assert isinstance(found, Entry)
            kinds[name] = found.kind
        tcp = find_service(call(b"QUBESRPC tcp src"), dirs)
        assert isinstance(tcp, Entry) and tcp.link_text == b"/dev/tcp/127.0.0.1/1"
        for name in ("plain", "fifo"):
            found = find_service(call(b"QUBESRPC " + name.encode() + b" src"), dirs)
            assert isinstance(found, LookupFailure)
            assert found.status == 125 and "Unknown service type" in found.message
    assert kinds == {
        "tcp": ServiceKind.TCP,
        "sock": ServiceKind.SOCKET,
        "link": ServiceKind.SOCKET,
        "dir": ServiceKind.EXECUTABLE,
    }


def test_config_defaults_when_absent(call: Call, tmp_path: Path) -> None:
    loaded = load_service_config(call(b"QUBESRPC test.Svc src"), [str(tmp_path)])
    assert loaded == ParsedConfig(DEFAULT_CONFIG, ())


def test_config_argument_specific_first(call: Call, tmp_path: Path) -> None:
    (tmp_path / "test.Svc").write_text("wait-for-session = false\n")
    (tmp_path / "test.Svc+a").write_text("wait-for-session = true\n")
    loaded = load_service_config(call(b"QUBESRPC test.Svc+a src"), [str(tmp_path)])
    assert isinstance(loaded, ParsedConfig) and loaded.config.wait_for_session


def test_config_read_callable_and_errors(call: Call, tmp_path: Path) -> None:
    (tmp_path / "test.Svc").write_text("")
    svc = call(b"QUBESRPC test.Svc src")
    loaded = load_service_config(svc, [str(tmp_path)], lambda path: b"force-user = 'x'\n")
    assert isinstance(loaded, ParsedConfig) and loaded.config.force_user == "x"
    bad = load_service_config(svc, [str(tmp_path)], lambda path: b"force-user = x\n")
    assert isinstance(bad, LookupFailure) and bad.status == 125

    def unreadable(path: bytes) -> bytes:
        raise PermissionError(13, "Permission denied")

    denied = load_service_config(svc, [str(tmp_path)], unreadable)
    assert isinstance(denied, LookupFailure) and "Permission denied" in denied.message


@pytest.mark.parametrize("entry", ["dir", "link"])
def test_config_lookup_errors(call: Call, tmp_path: Path, entry: str) -> None:
    if entry == "dir":
        (tmp_path / "test.Svc").mkdir()
    else:
        (tmp_path / "test.Svc").symlink_to("/dev/null/x")
    loaded = load_service_config(call(b"QUBESRPC test.Svc src"), [str(tmp_path)])
    assert isinstance(loaded, LookupFailure) and loaded.status == 125
