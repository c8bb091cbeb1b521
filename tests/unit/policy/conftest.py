"""Fixtures of the pure policy tests (helpers live in policy_helpers.py)."""

from __future__ import annotations

import pytest

from pyqrexec.policy.system_info import SystemInfo

from .policy_helpers import FIXTURE, Run, make_run


@pytest.fixture(scope="session")
def info() -> SystemInfo:
    return SystemInfo.from_json(FIXTURE.read_bytes())


@pytest.fixture
def run(info: SystemInfo) -> Run:
    return make_run(info)
