"""What the engine sends to qrexec-policy-agent: policy.Ask and policy.Notify
(docs/reference/policy.md#ask-and-notify).

Plain data plus the exact JSON encoding; the transport belongs to the daemon.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .system_info import SystemInfo

__all__ = ["AskRequest", "Notification", "icons", "parse_ask_reply"]


@dataclass(frozen=True, slots=True)
class AskRequest:
    guivm: str  # where the dialog is shown
    source: str
    service: str
    argument: str
    targets: tuple[str, ...]
    default_target: str
    icons: tuple[tuple[str, str], ...]
    #: how an answer may be remembered (docs/policy-agent.md "Remembering an answer"); the
    #: key is left out when empty, so the JSON stays upstream's
    remember: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        doc: dict[str, object] = {
            "source": self.source,
            "service": self.service,
            "argument": self.argument,
            "targets": list(self.targets),
            "default_target": self.default_target,
            "icons": dict(self.icons),
        }
        if self.remember:
            doc["remember"] = list(self.remember)
        return json.dumps(doc).encode("ascii")


@dataclass(frozen=True, slots=True)
class Notification:
    guivm: str
    resolution: str  # "allow" or "deny"
    service: str
    argument: str
    source: str
    target: str

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "resolution": self.resolution,
                "service": self.service,
                "argument": self.argument,
                "source": self.source,
                "target": self.target,
            }
        ).encode("ascii")


def icons(info: SystemInfo) -> tuple[tuple[str, str], ...]:
    """Every qube's icon in system-info order, then `@dispvm:N` for each disposable template."""
    found = [(d.name, d.icon or "") for d in info]
    found += [
        ("@dispvm:" + d.name, (d.icon or "").replace("app", "disp"))
        for d in info.dispvm_templates()
    ]
    return tuple(found)


def parse_ask_reply(data: bytes) -> str:
    """The agent's reply as text: ASCII expected; anything else is kept visible for the log."""
    return data.decode("ascii", errors="backslashreplace")
