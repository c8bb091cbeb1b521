"""The audit trail's hot-path formatting gives what the JSON encoder gives (docs/audit.md)."""

from __future__ import annotations

import json

from pyqrexec.policy.audit import DECISION_FIELDS, CallIds, decision_fields, encode

HOSTILE = ['a"b', "\\", "x\ny", "\u2028", "\x00\x1b[2J", "é", "\udcff", '"}\n{"event":"x"', ""]


def test_decision_fields_are_what_the_encoder_writes() -> None:
    for name in HOSTILE:
        values: dict[str, object] = {
            "time": "t", "event": "decision", "call": "0123456789abcdef", "source": name,
            "requested_source": None, "intended_target": name, "target": name,
            "target_uuid": None, "service": name, "argument": "+" + name, "decision": "deny",
            "rule": name, "grant": None, "asked": True, "answer": name, "reason": name,
        }
        line = ('{"time":"t","event":"decision","call":"0123456789abcdef",' + decision_fields(
            name, None, name, name, None, name, "+" + name, False, name, None, True, name, name,
        ) + "}\n").encode("ascii")
        assert line == encode(values)
        assert tuple(json.loads(line)) == DECISION_FIELDS


def test_call_ids_are_unique_16_hex_digits_also_past_the_counter() -> None:
    ids = CallIds()
    first = [ids() for _ in range(1000)]
    ids._next = (1 << 32) - 2  # the counter about to run out: a new random prefix
    last = [ids() for _ in range(4)]
    everything = first + last
    assert len(set(everything)) == len(everything)
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in everything)
    assert last[1].endswith("ffffffff") and last[2].endswith("00000000")
