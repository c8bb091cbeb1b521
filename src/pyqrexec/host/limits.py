"""Resource limits of a domain: processes, memory, CPU share (docs/qrexec-host.md "Limits").

Without them one domain takes the machine: a fork bomb fills the process table, a memory hog
wakes the kernel's global OOM killer, which may pick the manager or another domain.

This module is the pure part: `DomainLimits`, the reading of the TOML values, and which
controller files (cgroup v1 or v2) or systemd properties express a limit. `cgroups.py`
enforces them with a backend chosen once at start-up by `detect()`:

- `systemd`: systemd is pid 1 and `systemd-run --scope` works: each domain's agent runs in a
  transient scope carrying the limits as properties;
- `cgroupfs`: the host runs as root and can make cgroups itself; each of the `pids`,
  `memory` and `cpu` controllers is taken from cgroup v2 where it is enabled there, else from
  its cgroup v1 hierarchy (hybrid hosts: `memory` and `pids` on v1, cgroup2 without them);
- `none`: no limit can be enforced; one warning says so, and the agent gets
  `RLIMIT_NPROC` (per account, see `NoCgroups`).

The domain's agent joins its cgroup in the forked child, before exec (`join_in_child`), so
that everything the sandbox ever starts is inside from its first instruction; stopping the
domain kills whatever is left in the cgroup and removes it (`remove`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONTROLLERS",
    "DEFAULT_CPU_WEIGHT",
    "DEFAULT_MAX_PROCESSES",
    "DEFAULT_MEMORY",
    "MIN_MAX_PROCESSES",
    "MIN_MEMORY",
    "DomainLimits",
    "LimitError",
    "controller_files",
    "cpu_shares",
    "host_memory",
    "inside_mount",
    "own_cgroups",
    "parse_cpu_weight",
    "parse_max_processes",
    "parse_memory",
    "systemd_properties",
    "tree_name",
    "v1_mounts",
    "v2_mount",
]

#: every domain has a process limit: a fork bomb must not take the host
DEFAULT_MAX_PROCESSES = 512
#: a share of the host's RAM: a hog is killed inside its domain before the whole host runs
#: short, and the manager and dom0's daemons are never the kernel's choice
DEFAULT_MEMORY = "50%"
#: the kernel's own default weight: every domain gets as much CPU as any other process
DEFAULT_CPU_WEIGHT = 100
#: below these an agent cannot even start (a Python process and bwrap)
MIN_MAX_PROCESSES = 8
MIN_MEMORY = 32 << 20
#: the kernel's PID_MAX_LIMIT: pids.max refuses more
MAX_MAX_PROCESSES = 4 << 20
MAX_CPU_WEIGHT = 10000
#: the controllers used, in the order their files are written
CONTROLLERS = ("pids", "memory", "cpu")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class LimitError(ValueError):
    """A limit value the config cannot use (the message names what is accepted)."""


@dataclass(frozen=True)
class DomainLimits:
    max_processes: int = DEFAULT_MAX_PROCESSES
    #: bytes of RAM and swap together; None = no memory limit
    memory: int | None = None
    cpu_weight: int = DEFAULT_CPU_WEIGHT


def parse_memory(value: object, total: Callable[[], int]) -> int | None:
    """`memory` of the config: bytes (int), `"512M"`, `"2G"` (K, M, G, T: powers of 1024),
    `"25%"` of the host's RAM (`total()`, asked only then), or `"max"` = no limit."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise LimitError("memory must be bytes (integer) or a string like \"512M\", \"2G\", "
                         "\"25%\" or \"max\"")
    if value == "max":
        return None
    if isinstance(value, int):
        amount = value
    elif m := re.fullmatch(r"(\d+)([KMGT]?)", value.strip(), re.IGNORECASE):
        amount = int(m.group(1)) * _UNITS[m.group(2).upper()]
    elif m := re.fullmatch(r"(\d+)%", value.strip()):
        percent = int(m.group(1))
        if not 1 <= percent <= 100:
            raise LimitError(f"memory {value!r}: a share of RAM is 1% to 100%")
        amount = total() * percent // 100
    else:
        raise LimitError(f"memory {value!r}: expected bytes, a number with K, M, G or T, "
                         "a percentage of RAM, or \"max\"")
    if amount < MIN_MEMORY:
        raise LimitError(f"memory {value!r} is below the minimum of {MIN_MEMORY >> 20}M")
    return amount


def parse_max_processes(value: object) -> int:
    """`max_processes`: tasks (processes and threads) of the domain at once; always set."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LimitError("max_processes must be an integer (there is always a limit)")
    if value < MIN_MAX_PROCESSES:
        raise LimitError(f"max_processes {value} is below the minimum of {MIN_MAX_PROCESSES}")
    if value > MAX_MAX_PROCESSES:
        raise LimitError(f"max_processes {value} is above the kernel's maximum of "
                         f"{MAX_MAX_PROCESSES}")
    return value


def parse_cpu_weight(value: object) -> int:
    """`cpu_weight`: 1 to 10000, relative to other domains and the host's processes (100)."""
    if isinstance(value, bool) or not isinstance(value, int) or not (
            1 <= value <= MAX_CPU_WEIGHT):
        raise LimitError(f"cpu_weight must be an integer from 1 to {MAX_CPU_WEIGHT}")
    return value


def cpu_shares(weight: int) -> int:
    """cgroup v1's `cpu.shares` for a v2 weight: 100 -> 1024, both the kernel's default."""
    return min(max(weight * 1024 // 100, 2), 262144)


def controller_files(controller: str, version: int,
                     limits: DomainLimits) -> list[tuple[str, str, bool]]:
    """(file, value, required) to write, in order, in a domain's cgroup of `controller` on
    cgroup `version` (1 or 2). Optional files exist only with swap accounting."""
    if controller == "pids":
        return [("pids.max", str(limits.max_processes), True)]
    if controller == "memory":
        if limits.memory is None:
            return []
        if version == 2:
            # memory.max bounds RAM; no swap, so that the limit also bounds RAM and swap
            # together as on v1, and a hog cannot push the host into swapping
            return [("memory.max", str(limits.memory), True), ("memory.swap.max", "0", False)]
        # memsw (RAM + swap) may never be below limit_in_bytes: that one first
        return [("memory.limit_in_bytes", str(limits.memory), True),
                ("memory.memsw.limit_in_bytes", str(limits.memory), False)]
    if controller == "cpu":
        if version == 2:
            return [("cpu.weight", str(limits.cpu_weight), True)]
        return [("cpu.shares", str(cpu_shares(limits.cpu_weight)), True)]
    raise ValueError(f"unknown controller {controller!r}")


def systemd_properties(limits: DomainLimits) -> list[str]:
    """`systemd-run -p` values of the same limits."""
    props = [f"TasksMax={limits.max_processes}"]
    if limits.memory is not None:
        props += [f"MemoryMax={limits.memory}", "MemorySwapMax=0"]
    props.append(f"CPUWeight={limits.cpu_weight}")
    return props


def tree_name(state_dir: Path) -> str:
    """The cgroup (or systemd unit) name part that keeps two hosts apart: from the state
    directory, which only one running host may use."""
    return "qrexec-host-" + hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:12]


def v1_mounts(mountinfo: str) -> dict[str, tuple[Path, str]]:
    """controller -> (mount point, root of the hierarchy mounted there), cgroup v1."""
    found: dict[str, tuple[Path, str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 4 or fields[sep + 1] != "cgroup":
            continue
        for option in fields[sep + 3].split(","):
            found.setdefault(option, (Path(_unescape(fields[4])), _unescape(fields[3])))
    return found


def v2_mount(mountinfo: str) -> tuple[Path, str] | None:
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" in fields:
            sep = fields.index("-")
            if len(fields) > sep + 1 and fields[sep + 1] == "cgroup2":
                return Path(_unescape(fields[4])), _unescape(fields[3])
    return None


def own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """/proc/PID/cgroup: v1 controller -> path; the v2 path under the key ""."""
    own: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own[""] = parts[2]
        for controller in parts[1].split(","):
            if controller:
                own[controller] = parts[2]
    return own


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def inside_mount(mount: Path, root: str, path: str) -> Path | None:
    """Where cgroup `path` of a hierarchy is in the file system, if this mount shows it."""
    if root == "/":
        return mount / path.lstrip("/")
    if path == root or path.startswith(root.rstrip("/") + "/"):
        return mount / path[len(root):].lstrip("/")
    return None


def host_memory() -> int:
    """The host's RAM in bytes (MemTotal)."""
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")
