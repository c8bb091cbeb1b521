"""qrexec-legacy-convert's plan (docs/reference/cli.md#qrexec-legacy-convert, steps 2–4).

From two loads of the same policy, one following `!compat-4.0` and one ignoring it, `plan()`
picks the rules that only the legacy files provide and assigns each to a `policy.d` file: the
file of the configuration tool for its service when that tool can handle the rule, else
`30-user`. `new_text()` gives a destination file's content. Writing, backups and renames are
the program's job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .parser import ActionType, Policy, Rule
from .tokens import Token

__all__ = [
    "USER_FILE",
    "INPUT_FILE",
    "FILE_ORDER",
    "CONFIG_FILES",
    "USER_HEADING",
    "TOOL_HEADING",
    "legacy_rules",
    "fits_config_file",
    "plan",
    "new_text",
]

USER_FILE = "30-user"
INPUT_FILE = "50-config-input"
CONFIG_FILES = {
    "qubes.ClipboardPaste": "50-config-clipboard",
    "qubes.Filecopy": "50-config-filecopy",
    "qubes.UpdatesProxy": "50-config-updates",
    "qubes.OpenInVM": "50-config-openinvm",
    "qubes.OpenURL": "50-config-openurl",
    "qubes.InputKeyboard": INPUT_FILE,
    "qubes.InputMouse": INPUT_FILE,
    "qubes.InputTablet": INPUT_FILE,
    "u2f.Authenticate": "50-config-u2f",
    "u2f.Register": "50-config-u2f",
    "policy.RegisterArgument": "50-config-u2f",
}
#: The order in which the destination files are written (and reported).
FILE_ORDER = (USER_FILE, *dict.fromkeys(CONFIG_FILES.values()))

USER_HEADING = """
# Policy rules in this file were automatically converted from old
# policy format. Old files can be found in /etc/qubes-rpc/policy; they have
# the suffix .rpmsave.

# All rules pertaining to qubes.Gpg were moved to this file. If you want to
# move them to the relevant GUI config file, see 50-config-splitgpg. Caution:
# the GUI tool for qubes.Gpg policy supports only policy rules that have a
# single vm as a target.
"""
TOOL_HEADING = """
# THIS IS AN AUTOMATICALLY GENERATED POLICY FILE.
# Any changes made manually may be overwritten by Qubes Configuration Tools.
"""

_ADMIN = ("dom0", "@adminvm")
_UPDATE_CLIENTS = ("@type:TemplateVM", "@tag:whonix-updatevm")


def _keyword(token: Token) -> bool:
    return token.text.startswith("@") or token.text == "*"


def _text_in(token: Token | None, allowed: Sequence[str]) -> bool:
    return token is not None and token.text in allowed


def _contains_dispvm(token: Token | None) -> bool:
    return token is not None and "@dispvm" in token.text


def _clipboard(rule: Rule) -> bool:
    return rule.action.without_flags() in ("ask", "deny")


def _filecopy(rule: Rule) -> bool:
    return rule.action.without_flags() in ("allow", "ask", "deny")


def _updates(rule: Rule) -> bool:
    return (
        (not _keyword(rule.source) or rule.source.text in _UPDATE_CLIENTS)
        and "allow" in rule.action.without_flags()
        and (not _keyword(rule.target) or rule.target.text in ("@adminvm", "@default"))
    )


def _open_in_dispvm(rule: Rule) -> bool:
    action = rule.action
    if rule.target.text != "@dispvm":
        return False
    if action.type is ActionType.ASK:
        return _contains_dispvm(action.default_target)
    if action.type is ActionType.ALLOW:
        return _contains_dispvm(action.target)
    return True


def _register_argument(rule: Rule) -> bool:
    return rule.argument == "+u2f.Authenticate"


def _u2f(rule: Rule) -> bool:
    return (not _keyword(rule.target) or rule.target.text == "@adminvm") and rule.argument == "*"


def _input(rule: Rule) -> bool:
    action = rule.action
    return (
        rule.target.text in _ADMIN
        and not _keyword(rule.source)
        and all(t is None or _text_in(t, _ADMIN) for t in (action.target, action.default_target))
    )


# What each configuration tool can show (step 3's table); anything else goes to 30-user.
_FITS: dict[str, Callable[[Rule], bool]] = {
    "qubes.ClipboardPaste": _clipboard,
    "qubes.Filecopy": _filecopy,
    "qubes.UpdatesProxy": _updates,
    "qubes.OpenInVM": _open_in_dispvm,
    "qubes.OpenURL": _open_in_dispvm,
    "policy.RegisterArgument": _register_argument,
    "u2f.Authenticate": _u2f,
    "u2f.Register": _u2f,
    "qubes.InputKeyboard": _input,
    "qubes.InputMouse": _input,
    "qubes.InputTablet": _input,
}


def fits_config_file(rule: Rule) -> bool:
    """Whether the configuration tool of `rule`'s service can handle it."""
    fits = _FITS.get(rule.service)
    return fits is not None and fits(rule)


def legacy_rules(with_compat: Policy, without_compat: Policy) -> list[Rule]:
    """Rules only the legacy files provide, in policy order (the synthetic denies excluded)."""
    modern = {(r.file, r.line) for r in without_compat.rules}
    return [r for r in with_compat.rules if r.line and (r.file, r.line) not in modern]


def _catch_all(rule: Rule) -> bool:
    """A generic legacy file's final `$anyvm $anyvm deny`."""
    return (
        rule.action.type is ActionType.DENY
        and rule.source.text == "@anyvm"
        and rule.target.text == "@anyvm"
        and rule.argument == "*"
    )


def _to_convert(with_compat: Policy, without_compat: Policy) -> list[Rule]:
    """Step 2: per service, the legacy rules not already written in `policy.d` form."""
    legacy = legacy_rules(with_compat, without_compat)
    out: list[Rule] = []
    for service in dict.fromkeys(r.service for r in legacy):
        present = {r.without_flags() for r in without_compat.rules if r.service == service}
        missing = [r for r in legacy if r.service == service and r.without_flags() not in present]
        cut = next((i for i, r in enumerate(missing) if _catch_all(r)), len(missing))
        out += missing[:cut]
    return out


def plan(with_compat: Policy, without_compat: Policy) -> dict[str, list[Rule]]:
    """Steps 2–3: destination file name (without `.policy`) → its rules, in `FILE_ORDER`.

    Only non-empty files are listed. For `50-config-input` only the first rule per (service,
    SRC) is kept: a later one is shadowed there, and moving it to `30-user`, which is read
    earlier, would change what it decides.
    """
    by_file: dict[str, list[Rule]] = {name: [] for name in FILE_ORDER}
    seen_input: set[tuple[str, str]] = set()
    for rule in _to_convert(with_compat, without_compat):
        if not fits_config_file(rule):
            by_file[USER_FILE].append(rule)
            continue
        name = CONFIG_FILES[rule.service]
        if name == INPUT_FILE:
            key = (rule.service, rule.source.text)
            if key in seen_input:
                continue
            seen_input.add(key)
        by_file[name].append(rule)
    return {name: rules for name, rules in by_file.items() if rules}


def new_text(name: str, rules: Sequence[Rule], old: str | None) -> str:
    """Step 4: the content of destination `name` given its current content (None: absent).

    The converted rules come first, so they take precedence over what the file held; the
    input file is replaced, as its tool keeps one rule per qube and device.
    """
    heading = USER_HEADING if name == USER_FILE else TOOL_HEADING
    text = heading + "\n".join(rule.without_flags() for rule in rules) + "\n"
    if old is None or name == INPUT_FILE:
        return text
    if old.startswith(TOOL_HEADING):
        old = old[len(TOOL_HEADING) :]
    return text.rstrip("\n") + "\n" + old.lstrip("\n")
