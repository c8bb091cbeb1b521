"""Requests as the policy daemon sends them (docs/reference/policy.md#ask-and-notify)."""

from __future__ import annotations

import json
from typing import Any

from pyqrexec.policy_agent.request import AskRequest, parse_request

TARGETS = ["@dispvm:default-dvm", "personal", "vault"]


def ask_json(**changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "source": "work",
        "service": "test.Svc",
        "argument": "+arg",
        "targets": TARGETS,
        "default_target": "vault",
        "icons": {"work": "appvm-red", "@dispvm:default-dvm": "dispvm-red"},
    }
    doc.update(changes)
    for key in [k for k, v in doc.items() if v is None]:
        del doc[key]
    return json.dumps(doc).encode()


def ask_data(**changes: Any) -> bytes:
    return b"policy.Ask dom0 name dom0\0" + ask_json(**changes)


def ask(**changes: Any) -> AskRequest:
    request = parse_request(ask_data(**changes))
    assert isinstance(request, AskRequest)
    return request


def notify_data(resolution: str = "deny", argument: str = "+") -> bytes:
    doc = {
        "resolution": resolution,
        "service": "test.Svc",
        "argument": argument,
        "source": "work",
        "target": "vault",
    }
    return b"policy.Notify dom0 name dom0\0" + json.dumps(doc).encode()
