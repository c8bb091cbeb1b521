"""System information as typed data (docs/reference/policy.md#system-information).

`SystemInfo.from_json` validates the answer of qubesd's `internal.GetSystemInfo`; lookups accept a
qube name or its `uuid:UUID` alias.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import SystemInfoError

__all__ = ["ADMIN_UUID", "Domain", "SystemInfo"]

ADMIN_UUID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class Domain:
    name: str
    type: str
    uuid: str
    tags: tuple[str, ...] = ()
    default_dispvm: str | None = None
    template_for_dispvms: bool = False
    power_state: str = "Halted"
    label: str | None = None
    icon: str | None = None
    guivm: str | None = None
    relayvm: str | None = None
    transport_rpc: str | None = None
    internal: bool = False

    @property
    def is_running(self) -> bool:
        return self.power_state == "Running"


def _opt_str(entry: Mapping[str, Any], key: str, name: str) -> str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value
    raise SystemInfoError(f"domain {name!r}: {key} is not a string")


def _domain(name: str, entry: Any) -> Domain:
    if not isinstance(entry, dict):
        raise SystemInfoError(f"domain {name!r} is not an object")
    tags = entry.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise SystemInfoError(f"domain {name!r}: tags is not a list of strings")
    return Domain(
        name=name,
        type=_opt_str(entry, "type", name) or "",
        uuid=_opt_str(entry, "uuid", name) or "",
        tags=tuple(tags),
        default_dispvm=_opt_str(entry, "default_dispvm", name),
        template_for_dispvms=bool(entry.get("template_for_dispvms")),
        power_state=_opt_str(entry, "power_state", name) or "",
        label=_opt_str(entry, "label", name),
        icon=_opt_str(entry, "icon", name),
        guivm=_opt_str(entry, "guivm", name),
        relayvm=_opt_str(entry, "relayvm", name),
        transport_rpc=_opt_str(entry, "transport_rpc", name),
        internal=bool(entry.get("internal")),
    )


class SystemInfo:
    """The qubes known to qubesd, in system-info order, with `uuid:` aliases for lookups."""

    def __init__(self, domains: list[Domain]) -> None:
        self.domains: dict[str, Domain] = {d.name: d for d in domains}
        self._by_key: dict[str, Domain] = dict(self.domains)
        for d in domains:
            if d.uuid:
                self._by_key.setdefault("uuid:" + d.uuid, d)

    @classmethod
    def from_json(cls, data: bytes | str) -> SystemInfo:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise SystemInfoError(f"invalid JSON: {err}") from err
        if not isinstance(doc, dict) or not isinstance(doc.get("domains"), dict):
            raise SystemInfoError("no 'domains' object")
        return cls([_domain(name, entry) for name, entry in doc["domains"].items()])

    def get(self, name_or_uuid: str) -> Domain | None:
        """The qube called `name_or_uuid`, or whose uuid is given as `uuid:UUID`."""
        return self._by_key.get(name_or_uuid)

    def __contains__(self, name_or_uuid: object) -> bool:
        return name_or_uuid in self._by_key

    def __iter__(self) -> Iterator[Domain]:
        return iter(self.domains.values())

    def dispvm_templates(self) -> list[Domain]:
        return [d for d in self.domains.values() if d.template_for_dispvms]
