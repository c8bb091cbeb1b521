"""Session-wide hooks of the whole suite."""

from __future__ import annotations

import pytest

#: the integration files that take longest (tens of seconds of a worker's time each), longest
#: first. `pytest -n 4 --dist loadfile` hands out files in collection order, so one of these
#: started last would run alone at the end while the other workers idle: first, they overlap
#: with everything else. A file missing here only runs in its usual place.
LONGEST_FIRST = (
    "test_host_isolation.py",
    "test_host_daily.py",
    "test_host_domains.py",
    "test_host_scenarios_a.py",
    "test_daemon_socket.py",
    "test_remote.py",
    "test_client_library.py",
    "test_scenarios_e.py",
    "test_host_ops.py",
    "test_dom0_to_vm.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
