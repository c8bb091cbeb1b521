"""Pure parts of qrexec-host: the bubblewrap command line and the qubesd request format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyqrexec.host.sandbox import HostLayout, SandboxSpec, bwrap_argv, user_wrapper
from pyqrexec.qubesd.client import encode_call
from pyqrexec.qubesd.server import HostError, error_response, parse_request


def pairs(argv: list[str], option: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == option]


def test_bwrap_argv() -> None:
    spec = SandboxSpec(
        name="work", root=Path("/s/roots/work"), run_dir=Path("/s/dom/work/run"),
        vchan_view=Path("/s/vchan/3"), pairs=((Path("/s/vchan/0/3"), 0),),
        merged=(("etc", Path("/s/dom/work/merged/etc")),), info_fd=7,
        env={"VCHAN_DOMAIN": "3"})
    layout = HostLayout(links=(("/bin", "usr/bin"),), dirs=("/usr",),
                        extra_ro=("/opt/py/3.11", "/src"))
    argv = bwrap_argv(spec, layout, ["agent", "-S"], bwrap="/usr/bin/bwrap")
    assert argv[0] == "/usr/bin/bwrap" and argv[-3:] == ["--", "agent", "-S"]
    for option in ("--unshare-pid", "--unshare-net", "--die-with-parent", "--clearenv"):
        assert option in argv
    assert ("VCHAN_DOMAIN", "3") in pairs(argv, "--setenv")
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    kept = [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"]
    assert "CAP_SETUID" in kept and "CAP_SYS_ADMIN" not in kept and "CAP_MKNOD" not in kept
    assert ("/usr", "/usr") in pairs(argv, "--ro-bind")
    assert ("usr/bin", "/bin") in pairs(argv, "--symlink")
    binds = pairs(argv, "--bind")
    assert ("/s/dom/work/run", "/run/qubes") in binds
    assert ("/s/vchan/3", "/run/vchan") in binds
    assert ("/s/vchan/0/3", "/run/vchan/0") in pairs(argv, "--bind-try")
    ro = pairs(argv, "--ro-bind")
    assert ("/s/roots/work", "/run/qubes-root") in ro
    assert ("/s/dom/work/merged/etc", "/etc") in ro
    # of the host's /etc only the allow-listed entries, never the whole directory
    host_etc = pairs(argv, "--ro-bind-try")
    assert ("/etc/ld.so.cache", "/run/host/etc/ld.so.cache") in host_etc
    assert ("/etc", "/run/host/etc") not in host_etc and ("/etc", "/run/host/etc") not in ro
    for secret in ("shadow", "gshadow", "sudoers", "ssh", "subuid"):
        assert (f"/etc/{secret}", f"/run/host/etc/{secret}") not in host_etc
    assert ("/opt/py/3.11", "/opt/py/3.11") in ro
    # parents of extra binds are made traversable, once each
    dirs = [argv[i + 1] for i, a in enumerate(argv) if a == "--dir"]
    assert dirs.count("/opt") == 1 and "/opt/py" in dirs and "/run/host" in dirs
    assert argv[argv.index("--info-fd") + 1] == "7"
    # /tmp and /var/tmp are world-writable and sticky (a non-root agent's user needs them)
    for tmp in ("/tmp", "/var/tmp"):
        i = argv.index(tmp, argv.index("--tmpfs") - 1)
        assert argv[i - 3:i + 1] == ["--perms", "1777", "--tmpfs", tmp], argv[i - 3:i + 1]
    # the host's whole / is never bound: other domains' roots stay invisible
    assert ("/", "/") not in ro and ("/s", "/s") not in ro


def test_user_wrapper() -> None:
    assert user_wrapper(None) == [] and user_wrapper("root") == []
    argv = user_wrapper("nobody")
    assert argv[0] == "setpriv" and "--reuid=nobody" in argv and argv[-1] == "--"
    assert not any(a.startswith("--pdeathsig") for a in argv)
    # changing user clears a parent-death signal: setpriv sets it again, after the change
    assert user_wrapper("nobody", die_with_parent=True) == [*argv[:-1], "--pdeathsig=KILL", "--"]
    assert user_wrapper(None, die_with_parent=True) == []


def test_parse_request_round_trip() -> None:
    assert parse_request(encode_call("admin.vm.Start", "work")) == (
        "admin.vm.Start", "", "work", b"")
    assert parse_request(encode_call("admin.vm.CreateDisposable", "uuid:1", payload=b"uuid")
                         ) == ("admin.vm.CreateDisposable", "", "uuid:1", b"uuid")
    assert parse_request(encode_call("admin.vm.Start", "@adminvm", arg="x")) == (
        "admin.vm.Start", "x", "@adminvm", b"")
    for bad in (b"admin.vm.Start+ dom0 name work", b"a b\0", b"m+ dom0 weird x\0"):
        with pytest.raises(HostError):
            parse_request(bad)


def test_error_response() -> None:
    assert error_response("QubesException", "unsupported method") == (
        b"2\0QubesException\0\0unsupported method\0")


def test_probe_without_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyqrexec.host import sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert sandbox.probe_bwrap() == (
        None, "bwrap (Debian package bubblewrap) is not installed")


def test_merged_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyqrexec.host import sandbox

    host_etc = tmp_path / "hostetc"
    (host_etc / "qubes-rpc").mkdir(parents=True)
    (host_etc / "passwd").write_text("")
    (host_etc / "shadow").write_text("")
    (host_etc / "ld.so.cache").write_text("")
    (host_etc / "hosts").write_text("")
    root = tmp_path / "root"
    (root / "etc" / "qubes-rpc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("")
    real = sandbox.Path
    monkeypatch.setattr(sandbox, "Path",
                        lambda p: host_etc if p == "/etc" else real(p))
    dest = tmp_path / "merged"
    sandbox.build_merged_dir(dest, "etc", root, files={"passwd": "root:x:0:0::/root:/bin/sh\n",
                                                        "hosts": "generated\n"})
    links = {p.name: os.readlink(p) for p in dest.iterdir() if p.is_symlink()}
    # the root's entries win over generated ones; the host's own qubes-rpc is never shown,
    # nor any host entry off the allow-list (shadow, the host's passwd)
    assert links == {"ld.so.cache": "/run/host/etc/ld.so.cache",
                     "hosts": "/run/qubes-root/etc/hosts",
                     "qubes-rpc": "/run/qubes-root/etc/qubes-rpc",
                     "qubes": "/run/qubes-root/etc/qubes"}
    assert (dest / "passwd").read_text() == "root:x:0:0::/root:/bin/sh\n"
    assert not (dest / "shadow").exists()


def test_domain_accounts() -> None:
    from pyqrexec.host.sandbox import domain_accounts, etc_files

    accounts = domain_accounts(["nobody", "alice", "bob", ""],
                               {"nobody": (65534, 65534, "nogroup"),
                                "alice": (1000, 1000, "alice"),  # taken by `user`
                                "bob": (1002, 100, "users")})
    table = {a.name: (a.uid, a.gid, a.group, a.home) for a in accounts}
    assert table == {"root": (0, 0, "root", "/root"),
                     "user": (1000, 1000, "user", "/home/user"),
                     "nobody": (65534, 65534, "nogroup", "/nonexistent"),
                     "alice": (1001, 1001, "alice", "/home/alice"),
                     "bob": (1002, 100, "users", "/home/bob")}
    files = etc_files("work", accounts, "/bin/bash")
    assert files["passwd"].splitlines()[0] == "root:x:0:0:root:/root:/bin/bash"
    assert "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin" in files["passwd"]
    assert "users:x:100:" in files["group"].splitlines()
    assert files["hostname"] == "work\n" and "127.0.1.1\twork" in files["hosts"]


def test_qubesd_requests_are_logged(tmp_path: Path) -> None:
    """Every state-changing qubesd request gets one line in qrexec-host's log (with its
    answer); the read-only queries the tools poll do not."""
    import asyncio

    from pyqrexec.host.config import load
    from pyqrexec.host.manager import Manager
    from pyqrexec.host.methods import describe_request

    (tmp_path / "dom0").mkdir()
    (tmp_path / "work").mkdir()
    cfg_path = tmp_path / "host.toml"
    cfg_path.write_text('[domains.work]\nuuid = "33333333-3333-3333-3333-333333333333"\n')
    lines: list[str] = []
    manager = Manager(load(cfg_path), tmp_path / "s", None, env={}, log=lines.append)

    async def ask() -> None:
        await manager.methods.handle("pyqrexec.host.List", "", "dom0", b"", False)
        await manager.methods.handle("internal.GetSystemInfo", "", "dom0", b"", True)
        with pytest.raises(HostError):
            await manager.methods.handle(
                "admin.vm.Kill", "", "uuid:33333333-3333-3333-3333-333333333333", b"", False)
        with pytest.raises(HostError):
            await manager.methods.handle("admin.vm.CreateDisposable", "", "work", b"uuid", False)

    asyncio.run(ask())
    assert lines == [
        "qubesd: admin.vm.Kill uuid:33333333-3333-3333-3333-333333333333 -> "
        "QubesVMNotStartedError: Domain is powered off: work",
        "qubesd: admin.vm.CreateDisposable work payload=uuid -> "
        "QubesException: Domain work does not have template_for_dispvms set",
    ]
    assert describe_request("admin.vm.Start", "x", "@adminvm", b"\0a") == (
        "admin.vm.Start+x @adminvm payload=?a")
