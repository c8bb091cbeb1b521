"""qrexec-policy-agent as a process answering a real qrexec-policy-daemon
(docs/reference/policy.md#ask-and-notify)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .fixtures.fakes import query
from .fixtures.policy import PolicyAgent
from .fixtures.processes import wait_for

ASK_POLICY = "test.Svc * work sys-usb deny\ntest.Svc * work @anyvm ask default_target=vault\n"
W26_TARGETS = [
    "@dispvm:anon-dvm", "@dispvm:default-dvm", "anon-dvm", "default-dvm", "fedora",
    "personal", "relay", "remote1", "vault",
]  # fmt: skip


def req(source: str, target: str, service: str) -> bytes:
    return f"source={source}\nintended_target={target}\nservice_and_arg={service}\n\n".encode()


def answer_program(tmp: Path, body: str) -> str:
    path = tmp / "answer.py"
    path.write_text("import json, os, sys, time\nrequest = json.load(sys.stdin)\n" + body)
    return f"{sys.executable} {path}"


def test_answer_program_allows(agent_setup: PolicyAgent) -> None:
    d = agent_setup.daemon
    seen = d.tmp / "seen.json"
    d.write("30-user.policy", ASK_POLICY)
    body = f"json.dump(request, open({str(seen)!r}, 'w'))\nprint('allow:personal')\n"
    agent_setup.start("--answer-program", answer_program(d.tmp, body))
    d.start()
    answer = query(d.socket, req("work", "personal", "test.Svc"))
    assert answer.startswith(b"user=DEFAULT\nresult=allow\ntarget=personal\n"), answer
    request = json.loads(seen.read_text())
    assert request["source"] == "work"
    assert request["service"] == "test.Svc"
    assert request["argument"] == "+"
    assert request["targets"] == W26_TARGETS
    assert request["default_target"] == "vault"


def test_answer_program_denies_and_invalid_choice(agent_setup: PolicyAgent) -> None:
    d = agent_setup.daemon
    d.write("30-user.policy", ASK_POLICY)
    body = "print('deny' if request['argument'] == '+no' else 'allow:sys-usb')\n"
    agent_setup.start("--answer-program", answer_program(d.tmp, body))
    d.start()
    assert query(d.socket, req("work", "personal", "test.Svc+no")) == b"result=deny"
    # sys-usb was not offered: the agent itself turns the answer into deny
    assert query(d.socket, req("work", "personal", "test.Svc")) == b"result=deny"
    log = d.stop()
    assert log.count("denied by the user") == 2
    assert "gave an invalid answer: 'allow:sys-usb'" in agent_setup.stop()


def test_notifications_logged(agent_setup: PolicyAgent) -> None:
    d = agent_setup.daemon
    d.write("30-user.policy", "test.Svc * work vault allow notify=yes\n")
    agent_setup.start("--answer-program", "false")
    d.start()
    assert query(d.socket, req("personal", "vault", "test.Svc+x")) == b"result=deny"
    allowed = query(d.socket, req("work", "vault", "test.Svc"))
    assert allowed.startswith(b"user=DEFAULT\nresult=allow")
    # notifications are sent in the background: wait until the agent has shown both
    agent_setup.wait_logged("Denied: test.Svc: Denied test.Svc+x from personal to vault",
                            "Allowed: test.Svc: Allowed test.Svc from work to vault")
    d.stop()
    agent_setup.stop()


def test_slow_answer_does_not_block_another(agent_setup: PolicyAgent) -> None:
    d = agent_setup.daemon
    release = d.tmp / "release"
    asked = d.tmp / "asked"
    d.write("30-user.policy", "test.Svc * @anyvm @anyvm ask default_target=vault\n")
    body = (
        f"if request['source'] == 'work':\n    open({str(asked)!r}, 'w').close()\n"
        f"while request['source'] == 'work' and not os.path.exists({str(release)!r}):\n"
        "    time.sleep(0.02)\n"
        "print('allow:vault')\n"
    )
    agent_setup.start("--answer-program", answer_program(d.tmp, body))
    d.start()
    results: list[bytes] = []
    slow = threading.Thread(
        target=lambda: results.append(query(d.socket, req("work", "vault", "test.Svc")))
    )
    slow.start()
    wait_for(asked.exists, what="the slow question to reach the agent")
    fast = query(d.socket, req("personal", "vault", "test.Svc"))
    assert fast.startswith(b"user=DEFAULT\nresult=allow\ntarget=vault\n")
    assert slow.is_alive()
    release.touch()
    slow.join(30)
    assert results[0].startswith(b"user=DEFAULT\nresult=allow\ntarget=vault\n")


def test_without_front_end_asks_are_denied(agent_setup: PolicyAgent) -> None:
    d = agent_setup.daemon
    d.write("30-user.policy", ASK_POLICY)
    agent_setup.start()
    d.start()
    assert query(d.socket, req("work", "personal", "test.Svc")) == b"result=deny"
    assert "no front end to ask about test.Svc from work: deny" in agent_setup.stop()


def test_hostile_connection_does_not_kill_the_agent(agent_setup: PolicyAgent) -> None:
    agent_setup.start("--answer-program", "echo allow:vault")
    for data in (b"\xff\0\0", b"policy.Ask dom0\0" + b"{" * 200000, b"policy.Ask\0{}"):
        assert query(agent_setup.socket, data) in (b"deny", b"")
    with socket.socket(socket.AF_UNIX) as sock:  # a caller that goes away without a word
        sock.connect(agent_setup.socket)
    doc = {"source": "work", "service": "s", "argument": "+", "targets": ["vault"],
           "default_target": "", "icons": {}}  # fmt: skip
    data = b"policy.Ask dom0\0" + json.dumps(doc).encode()
    assert query(agent_setup.socket, data) == b"allow:vault"
    assert agent_setup.proc is not None and agent_setup.proc.poll() is None


def test_terminal_front_end_through_a_pty(agent_setup: PolicyAgent) -> None:
    d = agent_setup.daemon
    d.write("30-user.policy", ASK_POLICY)
    master, slave = os.openpty()
    try:
        agent_setup.start(stdin=slave, stdout=slave)  # stdin is a terminal: it asks there
        d.start()
        results: list[bytes] = []
        caller = threading.Thread(
            target=lambda: results.append(query(d.socket, req("work", "personal", "test.Svc")))
        )
        caller.start()
        seen = _read_until(master, b"(input in the next second is ignored)")
        shown = time.monotonic()
        assert b"Source:   work" in seen and b"Service:  test.Svc" in seen
        assert b"Disposable VM (anon-dvm)" in seen and b"Default:  vault" in seen
        os.write(master, b"1\n")  # typed too early: must not choose @dispvm:anon-dvm
        _read_until(master, b"n = deny]: ")
        assert time.monotonic() - shown >= 0.9
        os.write(master, b"6\n")  # personal
        caller.join(30)
        assert results[0].startswith(b"user=DEFAULT\nresult=allow\ntarget=personal\n")
    finally:
        os.close(master)
        os.close(slave)


def _read_until(fd: int, text: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline, seen
        seen += os.read(fd, 65536)
    return seen


def _autostart(marker: Path) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\nfrom pyqrexec.cli.qrexec_policy_agent_autostart import main\n"
        f"sys.exit(main(['--help'], markers=({str(marker)!r},)))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_autostart_only_in_gui_vm_or_dom0(tmp_path: Path) -> None:
    marker = tmp_path / "guivm"
    out = _autostart(marker)
    assert (out.returncode, out.stdout) == (0, "Not in GuiVM or dom0. Exiting.\n")
    marker.touch()
    out = _autostart(marker)
    assert out.returncode == 0 and out.stdout.startswith("usage: qrexec-policy-agent")


def test_answer_program_remembers_for_a_time(agent_setup: PolicyAgent) -> None:
    """The extended reply passes the real agent only as offered; the daemon keeps the grant."""
    d = agent_setup.daemon
    d.write("30-user.policy", ASK_POLICY)
    count = d.tmp / "count"
    body = (f"open({str(count)!r}, 'a').write('x')\n"
            "print('allow:personal for=300' if 'for' in request['remember'] "
            "else 'allow:personal')\n")
    agent_setup.start("--answer-program", answer_program(d.tmp, body))
    d.start()
    for _ in range(3):
        answer = query(d.socket, req("work", "personal", "test.Svc"))
        assert answer.startswith(b"user=DEFAULT\nresult=allow\ntarget=personal\n"), answer
    assert count.read_text() == "x"  # asked once
