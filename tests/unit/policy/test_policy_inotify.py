"""Policy change detection with inotify (docs/reference/policy.md#reloading) and its fallbacks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from pyqrexec.policy.loaders import PolicyWatch
from pyqrexec.policy.parser import Policy
from pyqrexec.policy_daemon import inotify_watch
from pyqrexec.policy_daemon.engine import EngineConfig, PolicyEngine
from pyqrexec.policy_daemon.inotify_watch import InotifyWatch, lookups
from pyqrexec.system import inotify
from pyqrexec.system.inotify import IN_Q_OVERFLOW, Event, InotifyUnavailable

RULE = "test.Svc * work vault allow\n"


def _engine(tmp: Path, inotify: bool = True) -> PolicyEngine:
    dirs = [str(tmp / "policy.d")]
    config = EngineConfig(dirs, str(tmp / "legacy"), "/nonexistent", [], inotify=inotify)
    return PolicyEngine(config, logging.getLogger("test-inotify"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "policy.d" / "include").mkdir(parents=True)
    (tmp_path / "policy.d" / "30-user.policy").write_text(RULE)
    (tmp_path / "policy.d" / "include" / "x").write_text("")
    return tmp_path


def _rules(engine: PolicyEngine) -> list[str]:
    policy = engine.policy()
    assert isinstance(policy, Policy), policy
    return [str(r) for r in policy.rules]


CHANGES: dict[str, Callable[[Path], object]] = {
    "same-size rewrite in place": lambda t: (t / "policy.d/30-user.policy").write_text(
        "test.Svc * work vault deny \n"
    ),
    "new file": lambda t: (t / "policy.d/40-new.policy").write_text(RULE),
    "file in a subdirectory": lambda t: (t / "policy.d/include/x").write_text("y"),
    "delete": lambda t: (t / "policy.d/30-user.policy").unlink(),
    "rename": lambda t: (t / "policy.d/30-user.policy").rename(t / "policy.d/31-user.policy"),
    "chmod": lambda t: (t / "policy.d/30-user.policy").chmod(0),
    "new subdirectory": lambda t: (t / "policy.d/include/sub").mkdir(),
    "legacy dir created": lambda t: (t / "legacy").mkdir(),
    "policy dir moved away": lambda t: (t / "policy.d").rename(t / "old"),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_each_change_is_seen(tree: Path, change: str) -> None:
    watch = InotifyWatch([str(tree / "policy.d"), str(tree / "legacy")])
    try:
        for path in (tree / "policy.d").rglob("*"):
            if path.is_file():
                path.read_bytes()  # reading is not a change
        assert not watch.changed()
        CHANGES[change](tree)
        assert watch.changed()
        assert watch.changed()  # stays changed until reloaded
    finally:
        watch.close()


def test_unrelated_changes_next_to_watched_paths_are_ignored(tree: Path) -> None:
    watch = InotifyWatch([str(tree / "policy.d"), str(tree / "legacy")])
    try:
        (tree / "unrelated").write_text("x")  # tree is watched for the names policy.d, legacy
        (tree / "unrelated").unlink()
        assert not watch.changed()
    finally:
        watch.close()


def test_lookups_follow_symlinks(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("")
    (tmp_path / "link").symlink_to("real")
    pairs, target = lookups(str(tmp_path / "link" / "f"))
    assert target == str(tmp_path / "real" / "f")
    assert (str(tmp_path), "link") in pairs
    assert (str(tmp_path), "real") in pairs
    assert pairs[-1] == (str(tmp_path / "real"), "f")
    assert lookups(str(tmp_path / "missing" / "f"))[1] is None


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "stat"])
def test_engine_sees_includes_outside_and_symlink_retargets(tree: Path, use_inotify: bool) -> None:
    outside = tree / "outside"
    (tree / "a.policy").write_text(RULE)
    (tree / "b.policy").write_text("test.Svc * work vault deny\n")
    outside.symlink_to("a.policy")
    (tree / "policy.d" / "30-user.policy").write_text(f"!include {outside}\n")
    engine = _engine(tree, use_inotify)
    assert _rules(engine) == ["test.Svc\t*\twork\tvault\tallow"]
    assert isinstance(engine._watch, InotifyWatch if use_inotify else PolicyWatch)
    assert _rules(engine) == ["test.Svc\t*\twork\tvault\tallow"]
    (tree / "a.policy").write_text("test.Svc * work vault deny \n")  # the file included
    assert _rules(engine) == ["test.Svc\t*\twork\tvault\tdeny"]
    outside.unlink()
    outside.symlink_to("b.policy")  # the symlink pointing elsewhere
    assert _rules(engine) == ["test.Svc\t*\twork\tvault\tdeny"]
    (tree / "b.policy").write_text("test.Svc * work vault allow notify=yes\n")
    assert _rules(engine) == ["test.Svc\t*\twork\tvault\tallow notify=yes"]


def test_overflow_means_full_reload(tree: Path) -> None:
    engine = _engine(tree)
    assert _rules(engine) == ["test.Svc\t*\twork\tvault\tallow"]
    watch = engine._watch
    assert isinstance(watch, InotifyWatch)
    (tree / "policy.d" / "30-user.policy").write_text("test.Svc * work vault deny \n")
    watch.drain()  # the events are lost ...
    assert not watch.changed()
    real = watch._inotify.read_events
    watch._inotify.read_events = lambda: [Event(-1, IN_Q_OVERFLOW, "")]  # type: ignore[method-assign]
    assert _rules(engine) == ["test.Svc\t*\twork\tvault\tdeny"]  # ... but the overflow is seen
    assert engine._watch is not watch
    watch._inotify.read_events = real  # type: ignore[method-assign]


def test_falls_back_to_stat_walk_without_inotify(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(self: object, path: str, mask: int) -> int:
        raise InotifyUnavailable(28, "inotify watch limit reached", path)

    monkeypatch.setattr(inotify.Inotify, "add_watch", unavailable)
    engine = _engine(tree)
    assert _rules(engine) == ["test.Svc\t*\twork\tvault\tallow"]
    assert isinstance(engine._watch, PolicyWatch)
    (tree / "policy.d" / "30-user.policy").write_text("test.Svc * work vault deny \n")
    assert _rules(engine) == ["test.Svc\t*\twork\tvault\tdeny"]


def test_falls_back_when_inotify_cannot_start(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_inotify(dirs: object) -> InotifyWatch:
        raise InotifyUnavailable(38, "inotify_init1: Function not implemented")

    monkeypatch.setattr(inotify_watch, "InotifyWatch", no_inotify)
    monkeypatch.setattr("pyqrexec.policy_daemon.engine.InotifyWatch", no_inotify)
    engine = _engine(tree)
    assert _rules(engine) == ["test.Svc\t*\twork\tvault\tallow"]
    assert isinstance(engine._watch, PolicyWatch)


def test_stat_walk_when_configured(tree: Path) -> None:
    engine = _engine(tree, inotify=False)
    assert _rules(engine) == ["test.Svc\t*\twork\tvault\tallow"]
    assert isinstance(engine._watch, PolicyWatch)


def test_reload_closes_the_old_watch(tree: Path) -> None:
    engine = _engine(tree)
    engine.reload()
    watch = engine._watch
    assert isinstance(watch, InotifyWatch)
    engine.reload()
    assert watch._inotify.fd == -1
    assert isinstance(engine._watch, InotifyWatch)
    assert engine._watch._inotify.fd >= 0
