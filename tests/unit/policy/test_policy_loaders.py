"""File selection, directives, legacy files and `!compat-4.0`
(docs/reference/policy.md#legacy-per-service-files, docs/reference/policy.md#file-order,
docs/reference/policy.md#directives, docs/reference/policy.md#compat-mode)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from pyqrexec.policy.errors import PolicyLoadError, PolicySyntaxError
from pyqrexec.policy.legacy import compat_order
from pyqrexec.policy.loaders import DEFAULT_POLICY_DIRS, MemoryFiles, load_policy

from .policy_helpers import COMPAT, LEGACY, USER

ETC = "/etc/qubes/policy.d"


def rules(files: Mapping[str, str], dirs: tuple[str, ...] = DEFAULT_POLICY_DIRS) -> list[str]:
    result = load_policy(MemoryFiles(files, dirs), DEFAULT_POLICY_DIRS, LEGACY)
    return [f"{r.where} {r}".replace("\t", " ") for r in result.policy.rules]


def syntax_error(files: Mapping[str, str]) -> str:
    with pytest.raises(PolicySyntaxError) as info:
        rules(files)
    return str(info.value)


def test_selection_order_and_merge() -> None:
    files = {
        f"{ETC}/b.policy": "b * a b deny",
        f"{ETC}/a.policy": "a * a b deny",
        f"{ETC}/.hidden.policy": "garbage",
        f"{ETC}/README": "garbage",
        f"{ETC}/x.policy.swp": "garbage",
        f"{ETC}/sub/c.policy": "garbage",
        "/run/qubes/policy.d/b.policy": "b * run b deny",
        "/run/qubes/policy.d/c.policy": "c * a b deny",
    }
    assert rules(files) == [
        f"{ETC}/a.policy:1 a * a b deny",
        "/run/qubes/policy.d/b.policy:1 b * run b deny",
        "/run/qubes/policy.d/c.policy:1 c * a b deny",
    ]


def test_invalid_file_name_is_a_load_error() -> None:
    with pytest.raises(PolicyLoadError) as info:
        rules({f"{ETC}/30-User.policy": ""})
    assert info.value.reason == f"invalid filename: {ETC}/30-User.policy" and info.value.notify


def test_includes_resolve_against_top_level_file() -> None:
    files = {
        USER: "!include include/one\n",
        f"{ETC}/include/one": "one * a b deny\n!include include/two\n",
        f"{ETC}/include/two": "two * a b deny\n",
        f"{ETC}/include/dir/b.policy": "dirb * a b deny\n",
        f"{ETC}/include/dir/a.policy": "dira * a b deny\n!include-dir include/empty\n",
        f"{ETC}/40-dir.policy": "!include-dir include/dir\n",
    }
    got = rules(files, (*DEFAULT_POLICY_DIRS, f"{ETC}/include/empty"))
    assert got == [
        f"{ETC}/include/one:1 one * a b deny",
        f"{ETC}/include/two:1 two * a b deny",
        f"{ETC}/include/dir/a.policy:1 dira * a b deny",
        f"{ETC}/include/dir/b.policy:1 dirb * a b deny",
    ]


def test_include_errors() -> None:
    assert syntax_error({USER: "!include nope"}) == f"{USER}:1: not a file: {ETC}/nope"
    assert syntax_error({USER: "\n!include-dir include"}) == (
        f"{USER}:2: not a directory: {ETC}/include"
    )
    assert syntax_error({USER: "!include 30-user.policy"}) == (f"{USER}:1: include loop: {USER}")
    chain = {f"{ETC}/include/f{i}": f"!include include/f{i + 1}" for i in range(40)}
    message = syntax_error({USER: "!include include/f0"} | chain)
    assert message.endswith("include nesting too deep")
    ok = {f"{ETC}/include/f{i}": f"!include include/f{i + 1}" for i in range(31)}
    ok[f"{ETC}/include/f31"] = "x * a b deny"
    assert len(rules({USER: "!include include/f0"} | ok)) == 1


def test_compat_order_and_synthetic_rules() -> None:
    names = ["b.Svc", "a.Svc+z", "a.Svc", "a.Svc+", "a.Svc+a", ".x", "y.rpmsave", "y.rpmnew",
             "y.swp", "bad name", "+x"]  # fmt: skip
    order, skipped = compat_order(names)
    # `+x` is the empty service with argument `+x`: first in byte order
    assert [f.name for f in order] == ["+x", "a.Svc+", "a.Svc+a", "a.Svc+z", "a.Svc", "b.Svc"]
    assert sorted(skipped) == sorted([".x", "y.rpmsave", "y.rpmnew", "y.swp", "bad name"])
    files = {
        COMPAT: "!compat-4.0\n",
        f"{LEGACY}/a.Svc+a": "work vault allow\n$include:shared\n",
        f"{LEGACY}/shared": "$anyvm $dispvm ask,default_target=$dispvm\n",
        f"{LEGACY}/a.Svc": "dom0 vault deny\n",
    }
    result = load_policy(MemoryFiles(files, DEFAULT_POLICY_DIRS), DEFAULT_POLICY_DIRS, LEGACY)
    assert [f"{r.where} {r}".replace("\t", " ") for r in result.policy.rules] == [
        f"{LEGACY}/a.Svc+a:1 a.Svc +a work vault allow",
        f"{LEGACY}/shared:1 a.Svc +a @anyvm @dispvm ask default_target=@dispvm",
        f"{LEGACY}/a.Svc+a:None a.Svc +a @anyvm @anyvm deny",
        f"{LEGACY}/a.Svc+a:None a.Svc +a @anyvm @adminvm deny",
        f"{LEGACY}/a.Svc:1 a.Svc * dom0 vault deny",
        # the included file is itself a (generic) legacy file, for service "shared"
        f"{LEGACY}/shared:1 shared * @anyvm @dispvm ask default_target=@dispvm",
    ]
    assert result.messages == [
        ("warning", f"warning: !compat-4.0 directive in file {COMPAT} line 1 is transitional "
                    "and will be deprecated"),
    ]  # fmt: skip


def test_legacy_errors() -> None:
    for text, message in [
        ("work", "wrong number of fields"),
        ("work vault", "wrong number of fields"),
        ("work vault maybe", "invalid action: maybe"),
        ("work vault allow foo", "invalid action parameter syntax: 'foo'"),
        ("$dispvm vault allow", "invalid source token: '@dispvm'"),
        ("!compat-4.0", "invalid directive"),
        ("!include-service a * b", "invalid directive"),
        ("$include:a b", "invalid number of params"),
    ]:
        files = {COMPAT: "!compat-4.0", f"{LEGACY}/t.Svc": f"# c\n{text}\n"}
        assert syntax_error(files) == f"{LEGACY}/t.Svc:2: {message}", text


def test_legacy_files_without_a_service() -> None:
    """`+x` and `+` are read for the empty service (as upstream), not skipped."""
    files = {COMPAT: "!compat-4.0\n", f"{LEGACY}/+x": "work vault allow\n",
             f"{LEGACY}/+": "$anyvm $anyvm deny\n"}
    assert rules(files) == [
        f"{LEGACY}/+:1  + @anyvm @anyvm deny",
        f"{LEGACY}/+:None  + @anyvm @anyvm deny",
        f"{LEGACY}/+:None  + @anyvm @adminvm deny",
        f"{LEGACY}/+x:1  +x work vault allow",
        f"{LEGACY}/+x:None  +x @anyvm @anyvm deny",
        f"{LEGACY}/+x:None  +x @anyvm @adminvm deny",
    ]
    assert syntax_error({**files, f"{LEGACY}/+x": "work vault maybe\n"}) == (
        f"{LEGACY}/+x:1: invalid action: maybe")


def test_legacy_only_host() -> None:
    files = {f"{LEGACY}/t.Svc+x": "work vault allow\n"}
    assert rules(files, dirs=("/nothing",)) == [
        f"{LEGACY}/t.Svc+x:1 t.Svc +x work vault allow",
        f"{LEGACY}/t.Svc+x:None t.Svc +x @anyvm @anyvm deny",
        f"{LEGACY}/t.Svc+x:None t.Svc +x @anyvm @adminvm deny",
    ]
    assert rules({}, dirs=("/nothing",)) == []


def test_unreadable_file() -> None:
    class Broken(MemoryFiles):
        def read_bytes(self, path: str) -> bytes:
            raise PermissionError(13, "Permission denied", path)

    with pytest.raises(PolicyLoadError) as info:
        load_policy(Broken({USER: ""}), DEFAULT_POLICY_DIRS, LEGACY)
    assert info.value.reason == (
        f"failed to load {USER} file: [Errno 13] Permission denied: '{USER}'"
    )
