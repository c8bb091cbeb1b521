"""A running domain's properties as `qrexec-host prefs` shows and sets them: what the policy
sees, checked as the TOML file is checked (docs/qrexec-host.md)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .config import (
    DomainConfig,
    icon_for,
    label_problem,
    reference_problem,
    tag_problem,
    user_problem,
)

__all__ = ["PREFS", "SETTABLE_PREFS", "PrefError", "prefs", "with_pref"]


#: the properties the policy sees, as `qrexec-host prefs` shows them; the settable ones
PREFS = ("label", "tags", "default_dispvm", "template_for_dispvms", "guivm", "internal",
         "default_user", "type", "uuid")
SETTABLE_PREFS = PREFS[:7]


def prefs(d: DomainConfig) -> dict[str, object]:
    return {"label": d.label, "tags": list(d.tags), "default_dispvm": d.default_dispvm,
            "template_for_dispvms": d.template_for_dispvms, "guivm": d.guivm,
            "internal": d.internal, "default_user": d.default_user, "type": d.type,
            "uuid": d.uuid}


class PrefError(Exception):
    """Why a property cannot be set; `kind` is qubesd's exception type for it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def with_pref(domains: dict[str, DomainConfig], name: str, key: str,
              text: str) -> DomainConfig:
    """`name`'s config with `key` set from `text` (as `qrexec-host prefs` gives it), checked
    as the TOML file is: the value's type and form, and what other domains name."""
    if key not in PREFS:
        raise PrefError("QubesNoSuchPropertyError", f"no such property {key!r} (one of "
                        f"{', '.join(PREFS)})")
    if key not in SETTABLE_PREFS:
        raise PrefError("QubesPropertyValueError", f"property {key!r} is read-only")
    d = domains[name]
    value, why = _pref_value(domains, name, key, text)
    if why:
        raise PrefError("QubesPropertyValueError", f"domain {name}: {why}")
    changed = replace(d, **{key: value})
    if key == "label" and d.icon == icon_for(d.type, d.label):
        changed = replace(changed, icon=icon_for(d.type, text))
    if key in ("default_dispvm", "guivm"):
        why = reference_problem(domains, changed, key)
        if why:
            raise PrefError("QubesPropertyValueError", f"domain {name}: {why}")
    return changed


def _pref_value(domains: dict[str, DomainConfig], name: str, key: str,
                text: str) -> tuple[Any, str | None]:
    """The value `text` gives property `key` of `name`, and why it cannot be set, if so."""
    if key == "label":
        return text, label_problem(text)
    if key == "tags":
        tags = tuple(t for t in text.split(",") if t)
        return tags, next(filter(None, map(tag_problem, tags)), None)
    if key in ("template_for_dispvms", "internal"):
        value = {"true": True, "false": False, "1": True, "0": False}.get(text.lower())
        if value is None:
            return None, f"{key} must be true or false"
        if key == "template_for_dispvms" and value is False:
            users = [o.name for o in domains.values() if o.default_dispvm == name]
            if users:
                return value, f"{name} is the default_dispvm of {', '.join(users)}"
        return value, None
    if key in ("default_dispvm", "guivm"):
        return text or None, None
    if key == "default_user":
        return text, user_problem(text)
    return text, None
