"""--answer-program: PROG reads the JSON, its first output line is the reply if valid."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from pyqrexec.policy_agent import AnswerProgram

from .helpers import ask, ask_json


def answer(program: str) -> str:
    frontend = AnswerProgram(program, logging.getLogger("test-policy-agent"))
    return asyncio.run(asyncio.wait_for(frontend.answer(ask()), 30))


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "answer.py"
    path.write_text("import sys\n" + body)
    return f"{sys.executable} {path}"


@pytest.mark.parametrize(
    ("output", "reply"),
    [
        ("allow:vault\\n", "allow:vault"),
        ("allow:@dispvm:default-dvm", "allow:@dispvm:default-dvm"),
        ("deny\\nallow:vault\\n", "deny"),
        ("allow:vault\\r\\n", "allow:vault"),
        ("allow:personal\\nextra lines\\n", "allow:personal"),
        ("allow:sys-usb\\n", "deny"),  # not a candidate
        ("yes\\n", "deny"),
        ("\\nallow:vault\\n", "deny"),  # only the first line counts
        ("", "deny"),
        ("allow:va\\xffult", "deny"),
    ],
)
def test_first_line_rules(tmp_path: Path, output: str, reply: str) -> None:
    assert answer(script(tmp_path, f"sys.stdout.write('{output}')\n")) == reply


def test_program_reads_the_request_json(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    body = f"open({str(seen)!r}, 'wb').write(sys.stdin.buffer.read())\nprint('deny')\n"
    assert answer(script(tmp_path, body)) == "deny"
    assert seen.read_bytes() == ask_json()


def test_failing_programs_deny(tmp_path: Path) -> None:
    assert answer(script(tmp_path, "print('allow:vault'); sys.exit(3)\n")) == "deny"
    assert answer(str(tmp_path / "missing")) == "deny"
    assert answer(script(tmp_path, "sys.stdout.write('a' * 200000)\n")) == "deny"
    # never given to a shell: the metacharacters are plain arguments
    assert answer("echo allow:vault; echo") == "deny"
    assert answer("echo allow:vault") == "allow:vault"


def test_program_ignoring_its_input(tmp_path: Path) -> None:
    assert answer(script(tmp_path, "sys.stdin.close(); print('allow:personal')\n")) == (
        "allow:personal"
    )
