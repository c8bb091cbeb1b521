"""The GTK dialog of qrexec-policy-agent on an Xvfb display (docs/reference/policy.md#ask).

Needs Xvfb, xdotool and PyGObject with GTK 3 (.ci/run installs them); skipped with the reason
when one is missing. GTK runs only in child processes, never in the pytest process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fixtures.fakes import query
from .fixtures.policy import PolicyAgent
from .fixtures.processes import SRC

ROOT = Path(__file__).resolve().parents[2]
TITLE = "qrexec policy: operation execution"
ASK_POLICY = "test.Svc * work sys-usb deny\ntest.Svc * work @anyvm ask default_target=vault\n"


def _missing() -> str | None:
    for tool in ("Xvfb", "xdotool"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install xvfb xdotool)"
    probe = "import gi; gi.require_version('Gtk', '3.0'); from gi.repository import Gtk"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"PyGObject with GTK 3 is unavailable ({last}); see docs/policy-agent.md"
    return None


MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A fresh Xvfb server; its display name."""
    read, write = os.pipe()
    proc = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(write),
            "-screen",
            "0",
            "1280x1024x24",
            "-nolisten",
            "tcp",
            "-wr",
        ],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    if not number:
        proc.kill()
        pytest.fail("Xvfb did not start")
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


def gui_env(display: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DISPLAY"] = display
    env["PYTHONPATH"] = os.pathsep.join([SRC, str(ROOT)])
    env.pop("WAYLAND_DISPLAY", None)
    env["NO_AT_BRIDGE"] = "1"  # no accessibility bus on a bare X server
    return env


def driver(display: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tests.integration.gtk_dialog_driver", *args]
    return subprocess.run(argv, env=gui_env(display), capture_output=True, text=True, timeout=60)


def test_dialog_lists_candidates_and_guards(display: str) -> None:
    done = driver(display)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["title"] == TITLE
    assert seen["candidates"] == [
        ["@dispvm:default-dvm", "Disposable VM (default-dvm)"],
        ["personal", "personal"],
        ["vault", "vault"],
    ]
    # preselected default; Allow disabled for the first second, Deny/Escape ignored then
    assert seen["at_start"] == {"visible": True, "allow_sensitive": False, "choice": "vault"}
    assert seen["replies_in_guard"] == []
    assert seen["after_guard"]["allow_sensitive"] is True
    assert seen["after_focus_regained"]["allow_sensitive"] is False
    assert seen["allow_reply"] == ["allow:personal"]
    # no default: nothing chosen, Allow disabled until a candidate is typed or picked
    assert seen["no_default"] == {"visible": True, "allow_sensitive": False, "choice": None}
    assert seen["typed_not_a_candidate"]["allow_sensitive"] is False
    assert seen["typed_label"] == {
        "visible": True,
        "allow_sensitive": True,
        "choice": "@dispvm:default-dvm",
    }
    assert seen["typed_reply"] == ["allow:@dispvm:default-dvm"]
    assert seen["escape_reply"] == ["deny"]
    assert seen["close_reply_in_guard"] == ["deny"]


def test_screenshot(display: str, tmp_path: Path) -> None:
    """Renders the picture of docs/policy-agent.md (PAGENT_DOCS_SCREENSHOT=1 rewrites it)."""
    path = tmp_path / "dialog.png"
    done = driver(display, str(path))
    assert done.returncode == 0, done.stderr
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    if os.environ.get("PAGENT_DOCS_SCREENSHOT"):
        shutil.copy(path, ROOT / "docs" / "policy-agent-dialog.png")


def xdotool(display: str, *args: str) -> str:
    env = {**os.environ, "DISPLAY": display}
    done = subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def find_dialog(display: str) -> str:
    """The id of the one dialog window, once it is shown."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        env = {**os.environ, "DISPLAY": display}
        argv = ["xdotool", "search", "--onlyvisible", "--name", TITLE]
        found = subprocess.run(argv, env=env, capture_output=True, text=True).stdout.split()
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("the dialog did not appear")


def ask_in_background(setup: PolicyAgent) -> tuple[threading.Thread, list[bytes]]:
    results: list[bytes] = []
    data = b"source=work\nintended_target=personal\nservice_and_arg=test.Svc\n\n"
    thread = threading.Thread(target=lambda: results.append(query(setup.daemon.socket, data)))
    thread.start()
    return thread, results


def test_agent_answers_the_daemon_through_the_dialog(display: str,
                                                     agent_setup: PolicyAgent) -> None:
    """Real keystrokes to the real agent's dialog; the real daemon gets allow, then deny."""
    d = agent_setup.daemon
    d.write("30-user.policy", ASK_POLICY)
    agent_setup.env.update(gui_env(display))
    agent_setup.start()
    d.start()

    thread, results = ask_in_background(agent_setup)
    window = find_dialog(display)
    xdotool(display, "windowfocus", "--sync", window)
    xdotool(display, "key", "--clearmodifiers", "Escape")  # inside the guard second: ignored
    time.sleep(1.5)
    assert thread.is_alive()
    xdotool(display, "key", "--clearmodifiers", "ctrl+a")
    xdotool(display, "type", "--delay", "20", "personal")
    xdotool(display, "key", "--clearmodifiers", "Return")
    thread.join(30)
    assert results[0].startswith(b"user=DEFAULT\nresult=allow\ntarget=personal\n"), results

    thread, results = ask_in_background(agent_setup)
    window = find_dialog(display)
    xdotool(display, "windowfocus", "--sync", window)
    time.sleep(1.5)
    xdotool(display, "key", "--clearmodifiers", "Escape")
    thread.join(30)
    assert results == [b"result=deny"]
    assert "denied by the user" in d.stop()


def trail(agent_setup: PolicyAgent) -> list[dict[str, object]]:
    path = agent_setup.daemon.tmp / "log" / "qrexec-audit.jsonl"
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def press_until_answered(display: str, key: str, thread: threading.Thread) -> None:
    """Press the answer's button (`key`, its mnemonic) until the dialog has answered.

    The buttons ignore input during the dialog's guard second, which the dialog counts from
    when it handles its own showing; on a loaded machine that can be well after the window
    became visible to xdotool, so one press after a fixed wait may fall inside it. Pressing
    again changes nothing else: the choices made before stay as they are."""
    for _ in range(10):
        xdotool(display, "key", "--clearmodifiers", key)
        thread.join(3)
        if not thread.is_alive():
            return


def test_remember_chooser_makes_a_grant_the_next_call_uses(
    display: str, agent_setup: PolicyAgent
) -> None:
    """docs/policy-agent.md "Remembering an answer": real keystrokes choose "For 5 minutes"
    in the dialog's Remember chooser; the daemon keeps the grant and decides the next same
    call by it, with no dialog; the Deny button remembers a deny the same way."""
    d = agent_setup.daemon
    d.write("30-user.policy", ASK_POLICY)
    agent_setup.env.update(gui_env(display))
    agent_setup.start()
    d.start()

    before = time.time()
    thread, results = ask_in_background(agent_setup)
    window = find_dialog(display)
    xdotool(display, "windowfocus", "--sync", window)
    time.sleep(1.5)  # the guard second, during which Allow does nothing
    xdotool(display, "key", "--clearmodifiers", "alt+r")  # to the Remember chooser
    xdotool(display, "key", "--clearmodifiers", "Down")  # "This time only" -> "For 5 minutes"
    # back to the target, typed last: 0.3 s after typing, the target's completion list may
    # pop up and take the keys that follow (Alt+R and Alt+A went to it on a loaded machine);
    # Return allows either way, closing the list first if it is up
    xdotool(display, "key", "--clearmodifiers", "alt+t")
    xdotool(display, "key", "--clearmodifiers", "ctrl+a")
    xdotool(display, "type", "--delay", "20", "personal")
    press_until_answered(display, "Return", thread)
    assert results[0].startswith(b"user=DEFAULT\nresult=allow\ntarget=personal\n"), results
    after = time.time()
    [created] = [r for r in trail(agent_setup) if r["event"] == "grant-created"]
    assert (created["kind"], created["answer"], created["source"], created["target"]) == (
        "for", "allow:personal", "work", "personal")
    expires = str(created["expires"])
    from pyqrexec.policy.audit import parse_time

    assert before + 300 <= parse_time(expires) <= after + 300

    # the same call again: decided by the grant, and no dialog is opened
    thread, results = ask_in_background(agent_setup)
    thread.join(30)
    assert results[0].startswith(b"user=DEFAULT\nresult=allow\ntarget=personal\n"), results
    decisions = [r for r in trail(agent_setup) if r["event"] == "decision"]
    assert [(r["asked"], r["grant"]) for r in decisions] == [
        (True, None), (False, created["grant"])]
    env = {**os.environ, "DISPLAY": display}
    argv = ["xdotool", "search", "--onlyvisible", "--name", TITLE]
    assert subprocess.run(argv, env=env, capture_output=True, text=True).stdout == ""

    # Deny with "For 1 hour" (two steps down) for another argument: denied without asking
    data = b"source=work\nintended_target=personal\nservice_and_arg=test.Svc+other\n\n"
    denied: list[bytes] = []
    before = time.time()
    thread = threading.Thread(target=lambda: denied.append(query(d.socket, data)))
    thread.start()
    window = find_dialog(display)
    xdotool(display, "windowfocus", "--sync", window)
    time.sleep(1.5)
    xdotool(display, "key", "--clearmodifiers", "alt+r")
    xdotool(display, "key", "--clearmodifiers", "Down", "Down")
    press_until_answered(display, "alt+d", thread)
    after = time.time()
    assert denied == [b"result=deny"]
    assert query(d.socket, data) == b"result=deny"
    grants = [r for r in trail(agent_setup) if r["event"] == "grant-created"]
    assert [(g["answer"], g["argument"]) for g in grants] == [
        ("allow:personal", "+"), ("deny", "+other")]
    assert before + 3600 <= parse_time(str(grants[1]["expires"])) <= after + 3600
    last = [r for r in trail(agent_setup) if r["event"] == "decision"][-1]
    assert (last["asked"], last["grant"], last["decision"]) == (False, grants[1]["grant"], "deny")
    d.stop()
