"""qrexec-legacy-convert's plan: which legacy rules go where, and the files' texts
(docs/reference/cli.md#qrexec-legacy-convert)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from pyqrexec.policy.legacy_convert import (
    TOOL_HEADING,
    USER_HEADING,
    fits_config_file,
    legacy_rules,
    new_text,
    plan,
)
from pyqrexec.policy.loaders import MemoryFiles, load_policy
from pyqrexec.policy.parser import Policy, Rule, parse_line

from .policy_helpers import COMPAT, LEGACY

DIR = "/etc/qubes/policy.d"


def rule(text: str) -> Rule:
    parsed = parse_line(text, "x.policy", 1)
    assert isinstance(parsed, Rule)
    return parsed


# (rule, kept in its 50-config file): step 3's table, row by row.
FITS = [
    # qubes.ClipboardPaste: ACTION text exactly ask or deny
    ("qubes.ClipboardPaste * work personal ask", True),
    ("qubes.ClipboardPaste * work personal deny notify=no", True),
    ("qubes.ClipboardPaste * work personal ask default_target=personal", False),
    ("qubes.ClipboardPaste * work personal allow", False),
    # qubes.Filecopy: ACTION text exactly allow, ask or deny
    ("qubes.Filecopy * work personal allow", True),
    ("qubes.Filecopy * work personal allow notify=yes autostart=no", True),
    ("qubes.Filecopy * @anyvm @anyvm ask", True),
    ("qubes.Filecopy * work personal allow user=root", False),
    ("qubes.Filecopy * work @default allow target=vault", False),
    # qubes.UpdatesProxy
    ("qubes.UpdatesProxy * fedora sys-net allow", True),
    ("qubes.UpdatesProxy * @type:TemplateVM @default allow target=sys-net", True),
    ("qubes.UpdatesProxy * @tag:whonix-updatevm @adminvm allow", True),
    ("qubes.UpdatesProxy * @anyvm @default allow target=sys-net", False),
    ("qubes.UpdatesProxy * @type:AppVM sys-net allow", False),
    ("qubes.UpdatesProxy * fedora sys-net deny", False),
    ("qubes.UpdatesProxy * fedora @anyvm allow", False),
    ("qubes.UpdatesProxy * fedora * allow", False),
    # qubes.OpenInVM / qubes.OpenURL
    ("qubes.OpenInVM * work @dispvm allow target=@dispvm:default-dvm", True),
    ("qubes.OpenURL * work @dispvm ask default_target=@dispvm", True),
    ("qubes.OpenURL * work @dispvm deny", True),
    ("qubes.OpenURL * work @dispvm allow", False),
    ("qubes.OpenURL * work @dispvm ask", False),
    ("qubes.OpenURL * work @dispvm ask default_target=vault", False),
    ("qubes.OpenInVM * work vault allow", False),
    # policy.RegisterArgument
    ("policy.RegisterArgument +u2f.Authenticate sys-usb @anyvm allow target=dom0", True),
    ("policy.RegisterArgument * sys-usb @anyvm allow target=dom0", False),
    # u2f.Authenticate / u2f.Register
    ("u2f.Authenticate * work sys-usb allow", True),
    ("u2f.Register * @anyvm @adminvm ask", True),
    ("u2f.Authenticate * work @anyvm ask", False),
    ("u2f.Register +KEY work sys-usb allow", False),
    # qubes.Input*
    ("qubes.InputKeyboard * sys-usb dom0 ask", True),
    ("qubes.InputMouse * sys-usb @adminvm allow target=dom0", True),
    ("qubes.InputTablet * sys-usb dom0 ask default_target=@adminvm user=root", True),
    ("qubes.InputMouse * @anyvm dom0 ask", False),
    ("qubes.InputMouse * sys-usb work allow", False),
    ("qubes.InputMouse * sys-usb dom0 ask target=work", False),
    # services without a configuration tool
    ("qubes.Gpg * work vault allow", False),
]


@pytest.mark.parametrize(("text", "fits"), FITS)
def test_fits_config_file(text: str, fits: bool) -> None:
    assert fits_config_file(rule(text)) is fits


def loads(legacy: Mapping[str, str], modern: str = "") -> tuple[Policy, Policy]:
    files = {COMPAT: "!compat-4.0\n", f"{DIR}/30-user.policy": modern}
    files.update({f"{LEGACY}/{name}": text for name, text in legacy.items()})
    memory = MemoryFiles(files)
    return (
        load_policy(memory, [DIR], LEGACY).policy,
        load_policy(memory, [DIR], LEGACY, compat=False).policy,
    )


def planned(legacy: Mapping[str, str], modern: str = "") -> dict[str, list[str]]:
    return {
        name: [r.without_flags() for r in rules]
        for name, rules in plan(*loads(legacy, modern)).items()
    }


def test_s74_rule_goes_to_user_file() -> None:
    # the two synthetic denies appended after test.Svc+a are never converted
    assert planned({"test.Svc+a": "work vault allow\n"}) == {
        "30-user": ["test.Svc\t+a\twork\tvault\tallow"]
    }


def test_legacy_rules_are_those_only_compat_loads() -> None:
    with_compat, without = loads({"test.Svc": "work vault allow\n"}, "test.Svc * a b deny\n")
    assert [(r.file, r.line) for r in legacy_rules(with_compat, without)] == [
        (f"{LEGACY}/test.Svc", 1)
    ]


def test_rules_already_in_policy_d_form_are_dropped() -> None:
    legacy = {"test.Svc": "work vault allow\npersonal vault deny\n"}
    modern = "test.Svc * work vault allow notify=yes\n"  # same text once notify= is left out
    assert planned(legacy, modern) == {"30-user": ["test.Svc\t*\tpersonal\tvault\tdeny"]}
    assert planned({"test.Svc": "work vault allow\n"}, "test.Svc * work vault allow\n") == {}


def test_generic_catch_all_ends_the_list() -> None:
    legacy = {"test.Svc": "work vault allow,user=root\n$anyvm $anyvm deny\npersonal vault allow\n"}
    assert planned(legacy) == {"30-user": ["test.Svc\t*\twork\tvault\tallow user=root"]}
    assert planned({"test.Svc": "anyvm anyvm deny\nwork vault allow\n"}) == {}


def test_config_and_user_files() -> None:
    legacy = {
        "qubes.Filecopy": "work personal ask\nwork vault allow,user=root\n$anyvm $anyvm deny\n",
        "qubes.Gpg": "work vault allow\n",
    }
    assert planned(legacy) == {
        "30-user": [
            "qubes.Filecopy\t*\twork\tvault\tallow user=root",
            "qubes.Gpg\t*\twork\tvault\tallow",
        ],
        "50-config-filecopy": ["qubes.Filecopy\t*\twork\tpersonal\task"],
    }


def test_input_keeps_first_rule_per_service_and_source() -> None:
    legacy = {
        "qubes.InputMouse": "sys-usb dom0 ask\nsys-usb dom0 allow\nsys-net dom0 allow\n",
        "qubes.InputKeyboard": "sys-usb dom0 deny\n$anyvm dom0 deny\n",
    }
    assert planned(legacy) == {
        "30-user": ["qubes.InputKeyboard\t*\t@anyvm\tdom0\tdeny"],
        "50-config-input": [
            "qubes.InputKeyboard\t*\tsys-usb\tdom0\tdeny",
            "qubes.InputMouse\t*\tsys-usb\tdom0\task",
            "qubes.InputMouse\t*\tsys-net\tdom0\tallow",
        ],
    }


RULES = [rule("test.Svc * work vault allow"), rule("test.B +x work @dispvm ask user=u")]
BODY = "test.Svc\t*\twork\tvault\tallow\ntest.B\t+x\twork\t@dispvm\task user=u\n"


def test_new_text_of_a_new_file() -> None:
    assert new_text("30-user", RULES, None) == USER_HEADING + BODY
    assert new_text("50-config-u2f", RULES, None) == TOOL_HEADING + BODY
    assert USER_HEADING.startswith("\n# Policy rules") and TOOL_HEADING.startswith("\n# THIS")


def test_new_text_goes_before_the_old_content() -> None:
    old = "\n\n# mine\ntest.Old * a b deny\n"
    assert new_text("30-user", RULES, old) == USER_HEADING + BODY + "# mine\ntest.Old * a b deny\n"
    # a tool file's own heading is not repeated
    tool_old = TOOL_HEADING + "\nqubes.Filecopy * a b ask\n"
    assert new_text("50-config-filecopy", RULES, tool_old) == (
        TOOL_HEADING + BODY + "qubes.Filecopy * a b ask\n"
    )


def test_new_text_replaces_the_input_file() -> None:
    assert new_text("50-config-input", RULES, TOOL_HEADING + "x y z\n") == TOOL_HEADING + BODY
