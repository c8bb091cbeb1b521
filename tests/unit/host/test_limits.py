"""Domain limits: reading the config values, and the files and properties expressing them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqrexec.host.cgroups import Systemd
from pyqrexec.host.config import ConfigError, parse
from pyqrexec.host.limits import (
    DEFAULT_CPU_WEIGHT,
    DEFAULT_MAX_PROCESSES,
    DomainLimits,
    LimitError,
    controller_files,
    cpu_shares,
    own_cgroups,
    parse_cpu_weight,
    parse_max_processes,
    parse_memory,
    systemd_properties,
    tree_name,
    v1_mounts,
    v2_mount,
)

GIB = 1 << 30


def ram() -> int:
    return 8 * GIB


@pytest.mark.parametrize(("value", "expected"), [
    (64 << 20, 64 << 20), ("512M", 512 << 20), ("512m", 512 << 20), ("2G", 2 * GIB),
    ("1T", 1 << 40), ("65536K", 64 << 20), (" 40000000 ", 40000000), ("25%", 2 * GIB),
    ("100%", 8 * GIB), ("max", None),
])
def test_memory_values(value: object, expected: int | None) -> None:
    assert parse_memory(value, ram) == expected


@pytest.mark.parametrize("value", [
    "1.5G", "512MB", "G", "-1", -5, "0%", "101%", "lots", True, 1.5, [1], "31M", 1000, "",
])
def test_bad_memory_values(value: object) -> None:
    with pytest.raises(LimitError):
        parse_memory(value, ram)


def test_ram_is_read_only_for_a_percentage() -> None:
    def no() -> int:
        raise AssertionError("asked for the RAM")

    assert parse_memory("1G", no) == GIB


def test_processes_and_weight() -> None:
    assert parse_max_processes(8) == 8 and parse_max_processes(4194304) == 4194304
    for bad in (7, 0, -1, 4194305, "512", True, None, "max"):
        with pytest.raises(LimitError):
            parse_max_processes(bad)
    assert parse_cpu_weight(1) == 1 and parse_cpu_weight(10000) == 10000
    for bad in (0, 10001, "100", True, 1.0):
        with pytest.raises(LimitError):
            parse_cpu_weight(bad)


def test_cpu_shares_follow_the_weight() -> None:
    assert cpu_shares(100) == 1024  # both kernels' default
    assert cpu_shares(200) == 2048 and cpu_shares(50) == 512
    assert cpu_shares(1) == 10 and cpu_shares(10000) == 102400
    assert cpu_shares(0) == 2  # v1's minimum, should a weight below 1 ever come


def test_v2_files() -> None:
    limits = DomainLimits(max_processes=64, memory=128 << 20, cpu_weight=50)
    assert controller_files("pids", 2, limits) == [("pids.max", "64", True)]
    assert controller_files("memory", 2, limits) == [
        ("memory.max", str(128 << 20), True), ("memory.swap.max", "0", False)]
    assert controller_files("cpu", 2, limits) == [("cpu.weight", "50", True)]


def test_v1_files() -> None:
    limits = DomainLimits(max_processes=64, memory=128 << 20, cpu_weight=50)
    assert controller_files("pids", 1, limits) == [("pids.max", "64", True)]
    # the memory limit before memory+swap, which may never be below it
    assert controller_files("memory", 1, limits) == [
        ("memory.limit_in_bytes", str(128 << 20), True),
        ("memory.memsw.limit_in_bytes", str(128 << 20), False)]
    assert controller_files("cpu", 1, limits) == [("cpu.shares", "512", True)]


def test_no_memory_limit_writes_no_memory_file() -> None:
    limits = DomainLimits(memory=None)
    assert controller_files("memory", 1, limits) == []
    assert controller_files("memory", 2, limits) == []
    assert controller_files("pids", 2, limits) == [
        ("pids.max", str(DEFAULT_MAX_PROCESSES), True)]
    with pytest.raises(ValueError):
        controller_files("cpuset", 2, limits)


def test_systemd_properties() -> None:
    assert systemd_properties(DomainLimits(max_processes=64, memory=GIB, cpu_weight=300)) == [
        "TasksMax=64", f"MemoryMax={GIB}", "MemorySwapMax=0", "CPUWeight=300"]
    assert systemd_properties(DomainLimits()) == [
        f"TasksMax={DEFAULT_MAX_PROCESSES}", f"CPUWeight={DEFAULT_CPU_WEIGHT}"]


def test_systemd_scope_argv() -> None:
    backend = Systemd(Path("/run/qrexec-host"), user=False)
    tree = tree_name(Path("/run/qrexec-host"))
    first = backend.create("work", DomainLimits(max_processes=64, memory=None))
    assert first.prefix == [
        "systemd-run", "--scope", "--quiet", "--collect", "--slice=qrexec.slice",
        f"--unit={tree}-work-1.scope", "-p", "TasksMax=64", "-p", "CPUWeight=100", "--"]
    assert first.procs_files == []
    # each start its own unit: the last one's scope may not have gone yet
    again = backend.create("work", DomainLimits())
    assert f"--unit={tree}-work-2.scope" in again.prefix
    user = Systemd(Path("/tmp/x"), user=True).create("work", DomainLimits())
    assert user.prefix[:3] == ["systemd-run", "--user", "--scope"]


def test_tree_name_keeps_hosts_apart() -> None:
    a, b = tree_name(Path("/run/qrexec-host")), tree_name(Path("/tmp/other"))
    assert a == tree_name(Path("/run/qrexec-host")) and a != b
    assert a.startswith("qrexec-host-") and len(a) == len("qrexec-host-") + 12


#: a hybrid host: controllers on v1, cgroup2 beside them without any
MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
39 31 0:36 /lxc/c1 /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/un\\040ified rw,relatime - cgroup2 cgroup2 rw
"""

PROC_CGROUP = """\
9:name=systemd:/
8:pids:/lxc/c1/x
4:memory:/process_api/abc
1:cpu,cpuacct:/
0::/
"""


def test_mounts_and_own_cgroups() -> None:
    v1 = v1_mounts(MOUNTINFO)
    assert v1["cpu"] == v1["cpuacct"] == (Path("/sys/fs/cgroup/cpu,cpuacct"), "/")
    assert v1["pids"] == (Path("/sys/fs/cgroup/pids"), "/lxc/c1")
    assert v1["memory"] == (Path("/sys/fs/cgroup/memory"), "/")
    assert "rw" in v1 and "tmpfs" not in v1  # options that are no controller are never asked
    assert v2_mount(MOUNTINFO) == (Path("/sys/fs/cgroup/un ified"), "/")
    assert v2_mount(MOUNTINFO.replace("cgroup2 cgroup2", "tmpfs tmpfs")) is None
    own = own_cgroups(PROC_CGROUP)
    assert own == {"name=systemd": "/", "pids": "/lxc/c1/x", "memory": "/process_api/abc",
                   "cpu": "/", "cpuacct": "/", "": "/"}


# -- the config keys ------------------------------------------------------------------------------
def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    for name in ("work", "dvm"):
        (tmp_path / name).mkdir(exist_ok=True)
    path = tmp_path / "host.toml"
    path.write_text(text)
    return parse(text, path)


def test_config_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[domains.work]\n")
    limits = cfg.domains["work"].limits
    assert limits is not None
    assert limits.max_processes == DEFAULT_MAX_PROCESSES
    assert limits.cpu_weight == DEFAULT_CPU_WEIGHT
    # half of this machine's RAM
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
    assert limits.memory == int(meminfo[1]) * 1024 // 2
    assert cfg.dom0.limits is None


def test_config_host_defaults_and_domain_values(tmp_path: Path) -> None:
    cfg = load(tmp_path, """\
[host]
memory = "1G"
max_processes = 100

[domains.work]
max_processes = 64
cpu_weight = 200

[domains.dvm]
memory = "max"
""")
    assert cfg.domains["work"].limits == DomainLimits(
        max_processes=64, memory=GIB, cpu_weight=200)
    assert cfg.domains["dvm"].limits == DomainLimits(max_processes=100, memory=None)


@pytest.mark.parametrize(("text", "line", "message"), [
    ("[domains.work]\nlabel = \"red\"\nmemory = \"lots\"\n", 3,
     "domain work: memory 'lots': expected"),
    ("[domains.work]\nmax_processes = 4\n", 2,
     "domain work: max_processes 4 is below the minimum of 8"),
    ("[domains.work]\ncpu_weight = 0\n", 2, "domain work: cpu_weight must be"),
    ("[host]\nsandbox = \"plain\"\nmax_processes = \"many\"\n\n[domains.work]\n", 3,
     "[host]: max_processes must be an integer"),
    ("[host]\nmemory = \"0%\"\n", 2, "[host]: memory '0%': a share of RAM is 1% to 100%"),
    ("[domains.dom0]\nmemory = \"1G\"\n", 2, "domain dom0: dom0 is this host and has no "
     "limits (memory)"),
])
def test_config_errors(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert str(info.value).startswith(f"{tmp_path / 'host.toml'}:{line}: {message}"), info.value
