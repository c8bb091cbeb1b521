"""qrexec-host as a daily tool: each rough edge a new user hit,
played through the real programs."""

from __future__ import annotations

import json
import os
import pty
import pwd
import select
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from .fixtures.host import (
    BWRAP,
    BWRAP_WHY,
    SYSTEM_PYTHON,
    HostWorld,
    default_layout,
    python_in_domain,
    service,
)
from .fixtures.processes import PYTHON, SRC, process_gone, program, wait_for

needs_bwrap = pytest.mark.skipif(BWRAP is None, reason=f"bubblewrap unusable: {BWRAP_WHY}")

#: test.Who's exit status in each domain (a disposable answers as its template, dvm)
WHO_STATUS = {"work": 0, "vault": 3, "other": 0, "bare": 0, "dvm": 4}


def daily_layout(top: Path) -> str:
    """The default world plus: an ask rule, a slow service and a service-less domain."""
    config = default_layout(top)
    (top / "bare").mkdir()
    with open(top / "dom0/etc/qubes/policy.d/20-daily.policy", "w") as f:
        f.write("test.Ask * work vault ask default_target=vault\n"
                "test.Slow * work other allow\n"
                "test.New * work bare allow\n"
                "test.Missing * work vault allow\n"
                "test.Escapes * work vault allow\n")
    service(top / "vault", "test.Ask", "#!/bin/sh\necho asked\n")
    service(top / "vault", "test.Escapes", f"#!/bin/sh\n{ESCAPES}\n")
    service(top / "other", "test.Slow", f"#!/bin/sh\ntouch {top}/slow-started\nexec sleep 60\n")
    for name, status in WHO_STATUS.items():  # who answers `run --service test.Who`
        service(top / name, "test.Who", f"#!/bin/sh\necho {name} \"$1\"\nexit {status}\n")
    return config + "\n[domains.bare]\n"


pytestmark = pytest.mark.host_world(layout=daily_layout, sandboxes=["plain"],
                                     display=False)


def policy_log(host_world: HostWorld) -> str:
    return (host_world.state / "log" / "policy-daemon.log").read_text(errors="replace")


# -- 1: one manager per state directory --------------------------------------------------
def test_second_up_on_the_same_state_is_refused(host_world: HostWorld) -> None:
    assert host_world.proc is not None
    for extra in ((), ("--detach",)):
        r = host_world.host("up", "--sandbox=plain", *extra)
        assert r.returncode == 1, r.stderr.decode()
        err = r.stderr.decode()
        assert f"pid {host_world.proc.pid}" in err and "in use" in err, err
    assert host_world.proc.poll() is None
    assert host_world.host("list").returncode == 0


# -- 3: ask rules without a front end say so -----------------------------------------------
def test_ask_without_a_front_end_says_so(host_world: HostWorld) -> None:
    assert "no front end to ask: ask rules will be denied" in host_world.log()
    assert "--answer-program" in host_world.log()
    r = host_world.host("call", "work", "vault", "test.Ask", input=b"")
    assert r.returncode == 126
    err = r.stderr.decode()
    assert err.startswith("Request refused\n") and "no front end to ask" in err, err
    log = policy_log(host_world)
    assert "test.Ask: work -> vault: denied: policy.Ask failed: no front end to ask" in log
    assert "denied by the user" not in log


# -- 4: dom0's policy tools read the host's policy -------------------------------------
def test_policy_exec_reads_the_hosts_policy(host_world: HostWorld) -> None:
    exec_ = [PYTHON, "-m", "pyqrexec.cli.qrexec_policy_exec"]
    r = host_world.host("run", "dom0", "--", *exec_, "work", "vault", "test.Echo")
    assert r.returncode == 0, r.stdout + r.stderr
    assert b"result=allow" in r.stdout and b"target=vault" in r.stdout
    r = host_world.host("run", "dom0", "--", *exec_, "--explain", "work", "vault", "test.Echo")
    assert r.returncode == 0, r.stdout + r.stderr
    assert b"30-test.policy:1: test.Echo\t*\twork\tvault\tallow" in r.stdout


def test_policy_exec_warns_when_no_policy_is_found(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QREXEC")}
    env.update(PYTHONPATH=SRC, QREXEC_POLICY_DIR=str(tmp_path / "missing"),
               QUBESD_INTERNAL_SOCKET=str(tmp_path / "none.sock"))
    r = subprocess.run([*program("qrexec-policy-exec"), "--just-evaluate", "a", "b", "c"],
                       capture_output=True, env=env, timeout=30)
    assert r.returncode == 1
    assert f"no policy directory found ({tmp_path / 'missing'})" in r.stderr.decode()


# -- 5: the person at the terminal is told why ---------------------------------------------
def test_refusal_names_the_rule_to_the_caller_only(host_world: HostWorld) -> None:
    r = host_world.host("call", "work", "dvm", "test.Echo", input=b"")
    assert r.returncode == 126
    err = r.stderr.decode()
    assert err.startswith("Request refused\n")
    assert "qrexec-host: call: refused: denied by policy" in err and "30-test.policy:5" in err
    # the domain's own program gets what it gets on Qubes, and not a word more
    inside = host_world.in_domain("work", [*python_in_domain("")[:1], "-m",
                                      "pyqrexec.cli.qrexec_client_vm",
                                      "--agent-socket={AGENT}", "dvm", "test.Echo"],
                             input=b"")
    assert inside.returncode == 126 and inside.stderr == b"Request refused\n"


def test_missing_service_is_named(host_world: HostWorld) -> None:
    r = host_world.host("call", "work", "vault", "test.Missing", input=b"")
    assert r.returncode == 127
    assert "no such service test.Missing in vault" in r.stderr.decode()


def test_policy_load_errors_reach_up_and_the_caller(host_world: HostWorld) -> None:
    broken = host_world.dir / "dom0/etc/qubes/policy.d/40-broken.policy"
    broken.write_text("test.Echo * work vault allow\nthis is not a rule\n")
    try:
        r = host_world.host("call", "work", "vault", "test.Echo", input=b"")
        assert r.returncode == 126
        err = r.stderr.decode()
        assert f"qrexec-host: call: policy failed to load: {broken}:2:" in err, err
        wait_for(lambda: f"policy failed to load: {broken}:2:" in host_world.log(), 30,
                 "up to report the policy error")
    finally:
        broken.unlink()
    r = host_world.host("call", "work", "vault", "test.Echo", input=b"")
    assert r.returncode == 0, r.stderr


def test_policy_error_at_start_is_printed_by_up() -> None:
    def layout(top: Path) -> str:
        config = default_layout(top)
        (top / "dom0/etc/qubes/policy.d/10-bad.policy").write_text("\n\nnot a rule\n")
        return config

    w = HostWorld("plain", layout, display=False)
    try:
        w.up()
        bad = w.dir / "dom0/etc/qubes/policy.d/10-bad.policy"
        wait_for(lambda: f"policy failed to load: {bad}:3:" in w.log(), 30, "the policy error")
    finally:
        w.close()


# -- 6: Ctrl-C ends a command with 130, without a traceback --------------------------------
def _interrupt(host_world: HostWorld, args: list[str],
               started: Path) -> subprocess.CompletedProcess[bytes]:
    started.unlink(missing_ok=True)
    proc = subprocess.Popen(host_world.argv(*args), env=host_world.env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for(lambda: started.exists() or proc.poll() is not None, 60, f"{started}")
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_in_call_and_run(host_world: HostWorld) -> None:
    started = host_world.dir / "slow-started"
    r = _interrupt(host_world, ["call", "work", "other", "test.Slow"], started)
    assert r.returncode == 130 and b"Traceback" not in r.stderr, r.stderr.decode()
    r = _interrupt(host_world, ["run", "work", "--", f"touch {started}; exec sleep 60"], started)
    assert r.returncode == 130 and b"Traceback" not in r.stderr, r.stderr.decode()


def test_ctrl_c_at_the_demo_prompt() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QREXEC", "DISPLAY"))}
    env["PYTHONPATH"] = SRC
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(PYTHON, [*program("qrexec-host"), "demo", "--sandbox=plain"], env)
    seen = b""
    try:
        deadline = time.monotonic() + 120
        while b"Allow to which target?" not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break
        assert b"Allow to which target?" in seen, seen.decode(errors="replace")
        os.write(fd, b"\x03")
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        with_pid_gone(pid)
        os.close(fd)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 130, text
    assert "Traceback" not in text, text
    top = text.split("domains in ", 1)[1].split(";", 1)[0]
    wait_for(lambda: not os.path.exists(top), 60, "the demo directory to go")


def with_pid_gone(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


# -- 7: no host: which socket, and what to do ----------------------------------------------
def test_no_host_names_the_socket_and_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    argv = [*program("qrexec-host"), f"--state-dir={state}", "list"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUBESD")}
    env["PYTHONPATH"] = SRC
    r = subprocess.run(argv, capture_output=True, env=env, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert str(state / "qubesd.sock") in err and f"--state-dir={state} up" in err, err
    state.mkdir()
    with socket.socket(socket.AF_UNIX) as s:  # what a crashed manager leaves
        s.bind(str(state / "qubesd.sock"))
    r = subprocess.run(argv, capture_output=True, env=env, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Connection refused" in err and "up`" in err, err


# -- 8: a call says nothing about the source domain running already -----------------------
def test_call_makes_no_noise(host_world: HostWorld) -> None:
    assert host_world.host("call", "work", "vault", "test.Echo", input=b"").returncode == 0
    assert host_world.host("run", "work", "--", "true").returncode == 0
    assert "QubesVMNotHaltedError" not in host_world.log()


# -- 9: down leaves only the logs -----------------------------------------------------------
def test_down_removes_everything_but_the_logs() -> None:
    w = HostWorld("plain", display=False)
    try:
        w.up()
        assert w.host("call", "work", "vault", "test.Echo", input=b"").returncode == 0
        r = w.host("down")
        assert r.returncode == 0, r.stderr
        assert w.proc is not None and w.proc.wait(30) == 0
        assert sorted(os.listdir(w.state)) == ["lock", "log"]
    finally:
        w.close()


def test_test_helpers_leave_no_agent_behind(tmp_path: Path) -> None:
    """A test session that ends without stopping its domains takes their agents with it."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from pathlib import Path
        from tests.integration.fixtures.processes import QrexecHost
        host = QrexecHost(Path({str(tmp_path)!r}))
        dom = host.domain("left", 3)
        agent = dom.start_agent()
        daemon = dom.start_daemon(wait=False)
        print(agent.pid, daemon.pid, flush=True)
        os._exit(0)
    """)
    r = subprocess.run([PYTHON, "-c", script], capture_output=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 0, r.stderr.decode()
    for pid in map(int, r.stdout.split()):
        wait_for(lambda pid=pid: process_gone(pid), 30, f"process {pid} to go")


# -- 10: a service added to a running domain's root -----------------------------------------
@needs_bwrap
def test_service_added_to_a_running_root_is_seen() -> None:
    w = HostWorld("bubblewrap", daily_layout, display=False)
    try:
        w.up()
        assert w.host("start", "bare").returncode == 0
        service(w.dir / "bare", "test.New", "#!/bin/sh\necho new service\n")
        r = w.host("call", "work", "bare", "test.New", input=b"")
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == b"new service\n"
    finally:
        w.close()


# -- 2: a host without root -------------------------------------------------------------------
def nobody_layout(top: Path) -> str:
    config = default_layout(top)
    # an account the host's user cannot become, and a domain started after the caller
    return config.replace('[domains.vault]\nlabel = "black"\nuser = "nobody"',
                          '[domains.vault]\nlabel = "black"\nuser = "daemon"\n'
                          'autostart = true') + "\n[domains.net]\n"


def nobody_policy(top: Path) -> None:
    with open(top / "dom0/etc/qubes/policy.d/20-net.policy", "w") as f:
        f.write("test.Echo * work net allow\n")


def nobody_world(sandbox: str) -> HostWorld:
    """`up` and every command run as nobody, with a state directory nobody owns."""
    w = HostWorld(sandbox, nobody_layout, display=False, account="nobody")
    nobody_policy(w.dir)
    service(w.dir / "net", "test.Echo", "#!/bin/sh\necho net: $(id -un)\ncat\n")
    w.state.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(w.state, nobody.pw_uid, nobody.pw_gid)
    return w


@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason="no system Python")
@pytest.mark.parametrize("sandbox", ["plain", pytest.param("bubblewrap", marks=needs_bwrap)])
def test_unprivileged_host(sandbox: str) -> None:
    w = nobody_world(sandbox)
    try:
        r = w.host("up", "--detach", f"--sandbox={sandbox}")
        assert r.returncode == 0, r.stderr.decode()
        assert "vault: user = 'daemon' ignored: without root every domain runs as nobody" in (
            r.stderr.decode() + (w.state / "log" / "qrexec-host.log").read_text())
        listing = {row["name"]: row for row in json.loads(w.qubesd("pyqrexec.host.List"))}
        assert listing["vault"]["state"] == "Running"
        # the default user is the one the agents run as
        r = w.host("call", "work", "vault", "test.Echo", input=b"hi\n")
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.endswith(b"as nobody\nhi\n")
        r = w.host("run", "work", "--", "id -un")
        assert (r.returncode, r.stdout) == (0, b"nobody\n"), r.stderr.decode()
        # a domain started after the caller: the call reaches it at once
        assert w.host("start", "net").returncode == 0
        r = w.host("call", "work", "net", "test.Echo", input=b"hi\n", timeout=30)
        assert (r.returncode, r.stdout) == (0, b"net: nobody\nhi\n"), r.stderr.decode()
    finally:
        w.host("down")
        if os.environ.get("KEEP_WORLD") is None:
            shutil.rmtree(w.dir, ignore_errors=True)


def test_failed_autostart_fails_up(tmp_path: Path) -> None:
    def layout(top: Path) -> str:
        config = default_layout(top)
        (top / "broken").mkdir()
        return config + '\n[domains.broken]\nautostart = true\nuser = "no-such-user"\n'

    w = HostWorld("plain", layout, display=False)
    try:
        r = w.host("up", "--detach", "--sandbox=plain", timeout=120)
        err = r.stderr.decode()
        assert r.returncode == 1, err
        assert "autostart of broken failed" in err, err
        assert not (w.state / "qubesd.sock").exists()
    finally:
        w.close()



# -- qvm-style operations ---------------------------------------------------------------------
def test_list_as_json_and_chosen_fields(host_world: HostWorld) -> None:
    r = host_world.host("list", "--format=json", "--fields=name,state,tags,template_for_dispvms")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["work"] == {"name": "work", "state": "Running", "tags": ["work"],
                            "template_for_dispvms": False}
    assert rows["dvm"]["template_for_dispvms"] is True
    r = host_world.host("list", "--fields=name,uuid")
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "UUID"] and len(lines) == len(rows) + 1
    r = host_world.host("list", "--fields=name,secret")
    assert r.returncode == 2 and b"unknown field 'secret'" in r.stderr


def test_shutdown_is_graceful(host_world: HostWorld) -> None:
    if host_world.domains()["other"]["state"] != "Halted":
        assert host_world.host("stop", "other").returncode == 0
    assert host_world.host("start", "other").returncode == 0
    r = host_world.host("shutdown", "other", "--wait", "--timeout=20")
    assert r.returncode == 0, r.stderr
    assert host_world.domains()["other"]["state"] == "Halted"
    assert "other shut down" in host_world.log()
    assert "agent ended" not in host_world.log()  # not taken for a crash
    r = host_world.host("shutdown", "other")
    assert r.returncode == 1 and b"QubesVMNotStartedError" in r.stderr
    assert host_world.host("start", "other").returncode == 0
    assert host_world.host("shutdown", "other", "--timeout=20").returncode == 0
    wait_for(lambda: host_world.domains()["other"]["state"] == "Halted", 30, "other to halt")


def test_run_service(host_world: HostWorld) -> None:
    r = host_world.host("run", "--service", "vault", "test.Echo+x", input=b"ping\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines()[0].endswith("from dom0 as nobody")
    assert r.stdout.decode().splitlines()[1] == "ping"
    r = host_world.host("run", "--service", "work", "--", "test.Who+arg")
    assert (r.returncode, r.stdout) == (0, b"work arg\n"), r.stderr
    r = host_world.host("run", "--service", "work", "--", "test.Who", "and more")
    assert r.returncode == 2 and b"--service takes one word" in r.stderr


def test_run_in_a_disposable(host_world: HostWorld) -> None:
    before = set(host_world.domains())
    r = host_world.host("run", "--dispvm", "--", "echo in a disposable; exit 5")
    assert (r.returncode, r.stdout) == (5, b"in a disposable\n"), r.stderr
    r = host_world.host("run", "--dispvm=dvm", "--service", "test.Who+d")
    assert (r.returncode, r.stdout) == (4, b"dvm d\n"), r.stderr
    assert set(host_world.domains()) == before  # each disposable killed and removed
    assert not any((host_world.state / "disp").glob("disp*"))
    r = host_world.host("run", "--dispvm=work", "--", "true")
    assert r.returncode == 1 and b"template_for_dispvms" in r.stderr
    r = host_world.host("run", "--dispvm", "work", "--", "true")  # no NAME with --dispvm
    assert r.returncode == 127
    assert set(host_world.domains()) == before


def test_run_in_all_running_domains(host_world: HostWorld) -> None:
    for name in ("work", "vault"):
        host_world.host("start", name)
    running = [n for n, d in host_world.domains().items()
               if d["state"] == "Running" and n != "dom0"]
    r = host_world.host("run", "--all", "--service", "test.Who+all")
    who = ["dvm" if n.startswith("disp") else n for n in running]
    assert r.stdout.decode().splitlines() == [f"{n} all" for n in who], r.stderr
    assert r.returncode == max(WHO_STATUS[n] for n in who) == 3
    r = host_world.host("run", "--all", "--", "exit 0")
    assert r.returncode == 0, r.stderr


ESCAPES = "printf 'a\\033[31mb\\tc\\177d\\n'; printf 'e\\033]0;x\\007\\n' >&2"


def test_run_filters_escape_characters(host_world: HostWorld) -> None:
    for name in ("work", "dom0"):
        r = host_world.host("run", "--filter-escape-chars", name, "--", ESCAPES)
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"a_[31mb\tc_d\n" and r.stderr == b"e_]0;x\x07\n", (name, r)
        for opts in (["--no-filter-escape-chars"], [], ["-p"]):  # default: no terminal
            r = host_world.host("run", *opts, name, "--", ESCAPES)
            assert r.stdout == b"a\033[31mb\tc\177d\n", (name, opts, r)


def on_a_terminal(host_world: HostWorld, *args: str) -> bytes:
    """The first line `qrexec-host ARGS` writes to stdout when that is a terminal (a pty)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(host_world.argv(*args), stdout=slave, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=host_world.env())
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        out = b""
        while select.select([master], [], [], 0)[0] and not out.endswith(b"\n"):
            out += os.read(master, 1024)
        return out
    finally:
        os.close(master)
        os.close(slave)


def test_run_filters_for_a_terminal_by_default(host_world: HostWorld) -> None:
    for opts, want in (([], b"a_[31mb"), (["--no-filter-escape-chars"], b"a\033[31mb")):
        out = on_a_terminal(host_world, "run", *opts, "work", "--", ESCAPES)
        assert out.startswith(want), out


def test_call_filters_what_the_service_sends(host_world: HostWorld) -> None:
    """`call` prints what another domain's service sent on this host's terminal: filtered
    as `run` filters, by default when stdout is a terminal (played below with a pty)."""
    raw = b"a\033[31mb\tc\177d\n"
    for opts, want in ((["--filter-escape-chars"], b"a_[31mb\tc_d\n"),
                       (["--no-filter-escape-chars"], raw), ([], raw)):  # [] : no terminal
        r = host_world.host("call", *opts, "work", "vault", "test.Escapes", input=b"")
        assert (r.returncode, r.stdout) == (0, want), (opts, r)
    out = on_a_terminal(host_world, "call", "work", "vault", "test.Escapes")
    assert out.startswith(b"a_[31mb"), out


def test_prefs_show_and_set_what_the_policy_sees(host_world: HostWorld) -> None:
    r = host_world.host("prefs", "bare")
    assert r.returncode == 0, r.stderr
    shown = dict(line.split(None, 1) for line in r.stdout.decode().splitlines())
    assert list(shown) == ["label", "tags", "default_dispvm", "template_for_dispvms",
                           "guivm", "internal", "default_user", "type", "uuid"]
    assert shown["label"] == "red" and shown["tags"] == "-" and shown["type"] == "AppVM"
    assert shown["default_dispvm"] == "dvm" and shown["template_for_dispvms"] == "false"
    assert host_world.host("prefs", "bare", "label").stdout == b"red\n"

    # test.Tagged: allowed to whoever has tag vip; the policy sees a change at once
    policy = host_world.dir / "dom0/etc/qubes/policy.d/10-tagged.policy"
    policy.write_text("test.Tagged * @tag:vip @default allow target=vault\n"
                      "test.Tagged * @anyvm @anyvm deny\n")
    service(host_world.dir / "vault", "test.Tagged", "#!/bin/sh\necho tagged\n")
    r = host_world.host("call", "bare", "@default", "test.Tagged", input=b"")
    assert r.returncode == 126, r.stderr
    assert host_world.host("prefs", "bare", "tags", "vip,other").returncode == 0
    assert host_world.host("prefs", "bare", "tags").stdout == b"vip,other\n"
    r = host_world.host("call", "bare", "@default", "test.Tagged", input=b"")
    assert (r.returncode, r.stdout) == (0, b"tagged\n"), r.stderr
    info = json.loads(host_world.qubesd("internal.GetSystemInfo", internal=True))["domains"]
    assert info["bare"]["tags"] == ["vip", "other"]
    assert host_world.host("prefs", "bare", "label", "blue").returncode == 0
    info = json.loads(host_world.qubesd("internal.GetSystemInfo", internal=True))["domains"]
    assert info["bare"]["label"] == "0x3465a4" and info["bare"]["icon"] == "appvm-blue"
    assert host_world.host("prefs", "bare", "tags", "").returncode == 0
    r = host_world.host("call", "bare", "@default", "test.Tagged", input=b"")
    assert r.returncode == 126, r.stderr

    for args, message in (
            (("bare", "colour", "red"), b"QubesNoSuchPropertyError: no such property 'colour'"),
            (("bare", "label", "pink"), b"unknown label 'pink'"),
            (("bare", "tags", "a b"), b"invalid tag 'a b'"),
            (("bare", "internal", "maybe"), b"internal must be true or false"),
            (("bare", "default_dispvm", "work"), b"does not have template_for_dispvms"),
            (("bare", "guivm", "nosuch"), b"guivm names unknown domain 'nosuch'"),
            (("dvm", "template_for_dispvms", "false"), b"dvm is the default_dispvm of"),
            (("bare", "uuid", "0"), b"property 'uuid' is read-only"),
            (("nosuch", "label", "red"), b"QubesVMNotFoundError"),
            (("bare", "colour"), b"no such property 'colour'")):
        r = host_world.host("prefs", *args)
        assert r.returncode == 1 and message in r.stderr, (args, r.stderr)
    assert host_world.host("prefs", "bare", "label").stdout == b"blue\n"
