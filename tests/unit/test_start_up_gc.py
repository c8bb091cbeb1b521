"""`pyqrexec.cli.start_up_over`: the collector the per-call launchers hold during start-up
resumes, with the start-up's objects set aside; a collector that runs is left alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pyqrexec.cli import start_up_over


@pytest.fixture
def gc_state() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_a_held_collector_resumes_with_start_up_set_aside(gc_state: None) -> None:
    gc.disable()
    kept = [[] for _ in range(100)]  # noqa: F841  (tracked objects that exist at start-up)
    start_up_over()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= 100


def test_a_running_collector_is_left_alone(gc_state: None) -> None:
    gc.enable()
    frozen = gc.get_freeze_count()
    start_up_over()
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen
