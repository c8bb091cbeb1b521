#!/usr/bin/env python3
"""dom0 -> VM call latency of several source trees in one run (issue 12, goal 1): whether a
change makes `qrexec-client -d VM nobody:true` faster, on a machine whose speed drifts more
between runs than most changes move a call.

Each tree is installed into its own environment (as every benchmark installs this one) and
runs its own host: a VM whose agent is `nobody`, its daemon, its client. The trees' calls are
timed in alternating rounds, with the floor of `call_latency.py` measured in the same rounds
(`python3 -c pass` + 5 x fork+exec of `true`, the interpreter the trees use); the trees take
turns going first. Per tree: the best and the median round, and the best against the floor;
for each tree after the first, the rounds paired with the first tree's: the median of their
differences, its quartiles, and in how many rounds it was the faster (a sign test: 15 of
20 or more is unlikely by chance, p < 0.05), which a drifting machine blurs far less than
two bests or two medians.

  git worktree add --detach /tmp/before HEAD~3     # or any copy of a tree
  python3 bench/compare_trees.py /tmp/before .     # [--calls N] [--rounds R]

`--command USER:COMMAND` times that call instead of `nobody:true` (with `root:...` the VM's
agent runs as root); the floor printed stays that of `nobody:true`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import fork_exec_true, installed, load, paired, timed

_SERVE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from world import BenchHost
user, command = sys.argv[2].split(":", 1)
with BenchHost() as host:
    host.vm("work", 1, root=user == "root")
    print(json.dumps({"env": dict(host.env(0)),
                      "argv": host.client_argv("-d", "work", sys.argv[2])}), flush=True)
    sys.stdin.read()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--command", default="nobody:true",
                        help="USER:COMMAND to call (root: the agent runs as root)")
    args = parser.parse_args()
    trees = [t.resolve() for t in args.trees]
    hosts = []
    for tree in trees:
        python = installed(tree) / "python3"
        # the tree's own world.py: its host is started the way its benchmarks start one
        proc = subprocess.Popen([str(python), "-c", _SERVE, str(tree / "bench"), args.command],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                cwd="/")
        assert proc.stdout is not None
        hosts.append((proc, json.loads(proc.stdout.readline())))
    try:
        python = str(installed(trees[0]) / "python3")
        for _proc, info in hosts:
            timed(info["argv"], 5, env=info["env"])  # warm-up
        calls: list[list[float]] = [[] for _ in trees]
        py: list[float] = []
        true: list[float] = []
        for _ in range(args.rounds):
            true.append(fork_exec_true(args.calls))
            py.append(timed([python, "-c", "pass"], max(args.calls // 2, 10)))
            first = len(true) % len(hosts)
            for i in [*range(first, len(hosts)), *range(first)]:
                info = hosts[i][1]
                calls[i].append(timed(info["argv"], args.calls, env=info["env"]))
    finally:
        for proc, _info in hosts:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(60)
    floor = (min(py) + 5 * min(true)) * 1e3
    print(f"dom0 -> VM `{args.command}`, {args.calls} calls per round, {args.rounds} rounds"
          f" alternated ({load()})")
    print(f"  floor = python3 -c pass + 5 x true: {floor:6.2f} ms")
    for tree, times in zip(trees, calls, strict=True):
        best, median = min(times) * 1e3, statistics.median(times) * 1e3
        print(f"  {str(tree):40} best {best:6.2f} ms ({best / floor:4.2f}x)"
              f"   median {median:6.2f} ms")
    for tree, times in zip(trees[1:], calls[1:], strict=True):
        print(f"  {str(tree):40} - first: {paired(times, calls[0])}")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    sys.stderr.write(f"({time.monotonic() - started:.0f} s)\n")
