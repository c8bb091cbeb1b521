"""qrexec-host on a real host: `reload`, `logs`, the journal, sd_notify for a
Type=notify unit, and what `install-system` installs, through the real programs."""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .fixtures.host import HostWorld, default_layout
from .fixtures.processes import SRC, parent_pid, process_gone, wait_for


def _domains(w: HostWorld) -> dict[str, dict[str, object]]:
    return w.domains()


pytestmark = pytest.mark.host_world(sandboxes=["plain"])


# -- reload ------------------------------------------------------------------------------
def test_reload_adds_removes_and_changes_halted_domains(fresh_host_world: HostWorld) -> None:
    (fresh_host_world.dir / "net").mkdir()
    text = fresh_host_world.config.read_text().replace("[domains.other]\n", "")
    text = text.replace('label = "black"', 'label = "blue"\ntags = ["secret"]')
    fresh_host_world.config.write_text(text + '\n[domains.net]\nautostart = true\n'
                            '\n[domains.lan]\nroot = "net"\n')
    r = fresh_host_world.host("reload")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().splitlines()
    assert "added: net lan" in out and "removed: other" in out and "started: net" in out
    assert "changed: vault (label, icon, tags)" in out, out
    d = _domains(fresh_host_world)
    assert "other" not in d and d["net"]["state"] == "Running" and d["lan"]["state"] == "Halted"
    assert d["vault"]["label"] == "blue" and d["vault"]["tags"] == ["secret"]
    assert d["work"]["state"] == "Running"  # untouched, still the same domid
    # the policy sees the new domain at once: work -> net answers
    (fresh_host_world.dir / "dom0/etc/qubes/policy.d/10-net.policy").write_text(
        "test.Echo * work net allow\n")
    (fresh_host_world.dir / "net/etc/qubes-rpc").mkdir(parents=True)
    (fresh_host_world.dir / "net/etc/qubes-rpc/test.Echo").write_text("#!/bin/sh\necho net here\n")
    (fresh_host_world.dir / "net/etc/qubes-rpc/test.Echo").chmod(0o755)
    r = fresh_host_world.host("call", "work", "net", "test.Echo", input=b"")
    assert r.returncode == 0 and r.stdout == b"net here\n", r.stderr
    assert fresh_host_world.host("reload").stdout == b"no change\n"


def test_reload_refuses_to_change_a_running_domains_sandbox(fresh_host_world: HostWorld) -> None:
    before = fresh_host_world.config.read_text()
    fresh_host_world.config.write_text(
        before.replace('tags = ["work"]', 'tags = ["work"]\nroot = "vault"')
        .replace('label = "black"', 'label = "green"'))
    r = fresh_host_world.host("reload")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "reload: nothing changed" in err and "work is running: root cannot change" in err
    assert _domains(fresh_host_world)["vault"]["label"] == "black"  # all or nothing
    # what the policy sees may change under a running domain
    fresh_host_world.config.write_text(before.replace('tags = ["work"]', 'tags = ["work", "lan"]\n'
                                           'label = "orange"'))
    r = fresh_host_world.host("reload")
    assert r.returncode == 0 and r.stdout == b"changed: work (label, icon, tags)\n", r.stderr
    assert fresh_host_world.host("prefs", "work", "tags").stdout == b"work,lan\n"
    assert _domains(fresh_host_world)["work"]["state"] == "Running"
    # removing a running domain is refused too
    fresh_host_world.config.write_text(before.replace("[domains.work]\nautostart = true\n", ""))
    r = fresh_host_world.host("reload")
    assert r.returncode == 1 and b"work is running: cannot remove it" in r.stderr


def test_reload_says_where_the_file_is_wrong(fresh_host_world: HostWorld) -> None:
    config = fresh_host_world.config
    config.write_text(config.read_text() + "\n[domains.bad]\nlabel = 3\n")
    r = fresh_host_world.host("reload")
    assert r.returncode == 1
    assert f"{config}:" in r.stderr.decode() and "nothing changed" in r.stderr.decode()
    assert "bad" not in _domains(fresh_host_world)


def test_reload_prints_policy_load_errors(fresh_host_world: HostWorld) -> None:
    broken = fresh_host_world.dir / "dom0/etc/qubes/policy.d/40-broken.policy"
    broken.write_text("test.Echo * work vault allow\nnot a rule\n")
    r = fresh_host_world.host("reload")
    assert r.returncode == 1
    assert f"qrexec-host: reload: policy failed to load: {broken}:2:" in r.stderr.decode()
    assert f"policy failed to load: {broken}:2:" in fresh_host_world.log()  # `up` says it too


def test_sighup_reloads(fresh_host_world: HostWorld) -> None:
    (fresh_host_world.dir / "net").mkdir()
    fresh_host_world.config.write_text(fresh_host_world.config.read_text() + "\n[domains.net]\n")
    assert fresh_host_world.proc is not None
    fresh_host_world.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "net" in _domains(fresh_host_world), 30, "SIGHUP to reload the config")


# -- logs ----------------------------------------------------------------------------------
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\S+): ")


def _stamps(out: str) -> list[tuple[str, str]]:
    return [m.groups() for m in map(STAMP.match, out.splitlines()) if m]


def test_logs_merges_every_program_in_time_order(fresh_host_world: HostWorld) -> None:
    assert fresh_host_world.host("call", "work", "vault", "test.Echo", input=b"x").returncode == 0
    r = fresh_host_world.host("logs")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    stamps = _stamps(out)
    sources = {s for _, s in stamps}
    assert {"qrexec-host", "policy-daemon", "agent.vault"} <= sources, sources
    assert [t for t, _ in stamps] == sorted(t for t, _ in stamps)
    assert "policy-daemon: qrexec-policy-daemon[" in out  # its own pid, stamped by the host
    assert "work -> vault: allowed to vault" in out and "up; state" in out
    # one domain: its own logs, and the others' lines that name it
    r = fresh_host_world.host("logs", "vault")
    vault = {s for _, s in _stamps(r.stdout.decode())}
    assert "agent.vault" in vault and not any(s.endswith(".work") for s in vault), vault
    assert "work -> vault" in r.stdout.decode() and "work started" not in r.stdout.decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="plays another local account with setpriv")
def test_logs_are_the_hosts_alone(fresh_host_world: HostWorld) -> None:
    """What the daemons log names every call: another local account (here `nobody`) can
    neither list the log directory nor read a log in it, while `logs` still can."""
    log_dir = fresh_host_world.state / "log"
    assert any(log_dir.glob("*.log")), log_dir
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    some_log = sorted(log_dir.glob("*.log"))[0]
    for argv in (["ls", str(log_dir)], ["cat", str(some_log)]):
        r = subprocess.run([*nobody, *argv], capture_output=True)
        assert r.returncode != 0 and b"Permission denied" in r.stderr, (argv, r)
    assert fresh_host_world.host("logs").returncode == 0


def test_logs_since(fresh_host_world: HostWorld) -> None:
    assert fresh_host_world.host("logs", "--since", "1h").stdout.count(b"\n") > 3
    assert fresh_host_world.host("logs", "--since=-10m").stdout.count(b"\n") > 3
    assert fresh_host_world.host("logs", "--since", "10m ago").stdout.count(b"\n") > 3
    future = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 3600))
    assert fresh_host_world.host("logs", "--since", future).stdout == b""
    r = fresh_host_world.host("logs", "--since", "soon")
    assert r.returncode == 2 and b"bad --since" in r.stderr
    assert fresh_host_world.host("logs", "--files").stdout.count(b".log\n") >= 3


def _read_until(proc: subprocess.Popen[bytes], want: bytes, deadline: float) -> bytes:
    assert proc.stdout is not None
    seen = b""
    while want not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{want!r} not seen in {seen[-2000:]!r}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"logs -f ended: {seen[-2000:]!r}"
            seen += chunk
    return seen


def test_logs_follow(fresh_host_world: HostWorld) -> None:
    proc = subprocess.Popen(fresh_host_world.argv("logs", "-f"), stdout=subprocess.PIPE,
                            env=fresh_host_world.env())
    try:
        _read_until(proc, b"up; state", time.monotonic() + 30)
        (fresh_host_world.dir / "net").mkdir()  # a domain whose log file does not exist yet
        config = fresh_host_world.config
        config.write_text(config.read_text() + "\n[domains.net]\n")
        assert fresh_host_world.host("reload").returncode == 0
        assert fresh_host_world.host("start", "net").returncode == 0
        seen = _read_until(proc, b"net started", time.monotonic() + 30)
        call = fresh_host_world.host("call", "work", "vault", "test.Echo", input=b"")
        assert call.returncode == 0
        seen += _read_until(proc, b"agent.vault: qrexec-agent", time.monotonic() + 30)
        assert b"work -> vault: allowed" in seen
    finally:
        proc.kill()
        proc.wait()


# -- the journal -------------------------------------------------------------------------
class FakeJournal:
    """A socket speaking the receiving end of the journal's stdout-stream protocol."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(64)
        self.streams: dict[str, bytes] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            while chunk := conn.recv(65536):
                data += chunk
                head = data.split(b"\n", 7)
                if len(head) == 8:
                    with self.lock:
                        self.streams[head[0].decode()] = head[7]

    def text(self, ident: str) -> str:
        with self.lock:
            return self.streams.get(ident, b"").decode(errors="replace")


class JournalWorld(HostWorld):
    """`up` with its stderr taken for the journal (JOURNAL_STREAM names it)."""

    def env(self) -> dict[str, str]:
        e = super().env()
        log = self.dir / "up.log"
        log.touch()
        st = os.stat(log)
        e.update(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
                 QREXEC_HOST_JOURNAL_SOCKET=str(self.dir / "journal.sock"))
        return e


def test_under_systemd_the_programs_log_to_the_journal() -> None:
    w = JournalWorld("plain")
    journal = FakeJournal(w.dir / "journal.sock")
    try:
        w.up()
        assert w.host("call", "work", "vault", "test.Echo", input=b"").returncode == 0
        wait_for(lambda: "executed" in journal.text("qrexec-agent.vault"), 30,
                 "the vault agent's line in the journal")
        wait_for(lambda: "work -> vault: allowed" in journal.text("qrexec-policy-daemon"), 30,
                 "the policy daemon's line in the journal")
        assert {"qrexec-agent.work", "qrexec-daemon.work", "qrexec-policy-agent"} <= set(
            journal.streams)
        # no stamp of ours: the journal has its own
        assert not re.match(r"\d{4}-", journal.text("qrexec-policy-daemon"))
        assert not (w.state / "log" / "policy-daemon.log").exists()
        # `logs` asks journalctl for exactly these identifiers
        bin_dir = w.dir / "bin"
        bin_dir.mkdir()
        (bin_dir / "journalctl").write_text('#!/bin/sh\necho "journalctl $*"\n')
        (bin_dir / "journalctl").chmod(0o755)
        env = w.env()
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        r = subprocess.run(w.argv("logs", "vault", "-f", "--since", "10m"), env=env,
                           capture_output=True)
        assert r.returncode == 0, r.stderr
        words = r.stdout.decode().split()
        assert "-t qrexec-agent.vault -t qrexec-daemon.vault" in " ".join(words)
        assert "--follow" in words and any(x.startswith("--since=") for x in words)
        assert "-t qrexec-agent.work" not in r.stdout.decode()
        r = subprocess.run(w.argv("logs"), env=env, capture_output=True)
        for ident in ("qrexec-host", "qrexec-policy-daemon", "qrexec-agent.work"):
            assert f"-t {ident} " in r.stdout.decode() + " "
    finally:
        w.close()
        journal.sock.close()


# -- sd_notify -----------------------------------------------------------------------------
class Notifications:
    """The datagram socket systemd would listen on for one service's notifications."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def next(self, timeout: float = 60) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_up_notifies_systemd(abstract: bool) -> None:
    w = HostWorld("plain")
    name = f"@qrexec-test-{os.getpid()}-{id(w)}" if abstract else str(w.dir / "notify")
    notes = Notifications(b"\0" + name[1:].encode() if abstract else name)
    env = w.env()
    env["NOTIFY_SOCKET"] = name
    proc = subprocess.Popen(w.argv("up", "--sandbox=plain"), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        ready = notes.next()
        assert ready.get("READY") == "1" and ready["MAINPID"] == str(proc.pid), ready
        # ready means dom0's side and the autostart domains are up
        assert _domains(w)["work"]["state"] == "Running"
        assert (w.state / "policy.sock").exists()
        # no program of the host inherits the socket: nothing but `up` speaks to systemd
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != proc.pid:
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    continue
                assert f"NOTIFY_SOCKET={name}".encode() not in environ.split(b"\0")
        proc.send_signal(signal.SIGHUP)
        assert notes.next().get("RELOADING") == "1"
        assert notes.next().get("READY") == "1"
        proc.send_signal(signal.SIGTERM)
        assert notes.next().get("STOPPING") == "1"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notes.sock.close()
        w.close()


# -- install-system --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("prefix")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QREXEC")}
    env["PYTHONPATH"] = SRC
    from .fixtures.processes import program

    r = subprocess.run([*program("qrexec-host"), "install-system", f"--prefix={top}"],
                       env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert b"systemctl enable --now qrexec-host" in r.stderr
    return top


def test_install_system_writes_unit_pages_and_completion(prefix: Path) -> None:
    unit = (prefix / "lib/systemd/system/qrexec-host.service").read_text()
    for line in ("Type=notify", "NotifyAccess=main", "KillMode=mixed",
                 "ExecReload=/bin/kill -HUP $MAINPID", "WantedBy=multi-user.target"):
        assert line + "\n" in unit
    assert re.search(r"^ExecStart=.* --config=/etc/qrexec-host/qrexec-host.toml "
                     r"--state-dir=/run/qrexec-host up$", unit, re.M)
    pages = {p.name for p in (prefix / "share/man/man1").iterdir()}
    for name in ("qrexec-host", "qrexec-daemon", "qrexec-agent", "qrexec-client",
                 "qrexec-client-vm", "qrexec-policy-daemon", "qrexec-policy-agent",
                 "qubes-policy", "qrexec-audit", "qrexec-fork-server"):
        assert f"{name}.1" in pages
    page = (prefix / "share/man/man1/qrexec-host.1").read_text()
    assert page.startswith('.TH "QREXEC-HOST" "1"')
    for section in (".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH EXIT STATUS"):
        assert section in page
    assert "reload" in page and "install\\-system" in page
    rendered = subprocess.run(["man", "-l", str(prefix / "share/man/man1/qrexec-host.1")],
                              capture_output=True, env={**os.environ, "MANWIDTH": "100"})
    if rendered.returncode == 0:  # man may be missing on a minimal machine
        assert b"qrexec-host - the domain manager" in rendered.stdout


def _complete(prefix: Path, words: list[str], cwd: Path | None = None,
              env: dict[str, str] | None = None) -> list[str]:
    script = prefix / "share/bash-completion/completions/qrexec-host"
    quoted = " ".join(shlex.quote(w) for w in words)
    r = subprocess.run(
        ["bash", "-c", f"source {shlex.quote(str(script))}; COMP_WORDS=({quoted}); "
         f"COMP_CWORD={len(words) - 1}; _qrexec_host; printf '%s\\n' \"${{COMPREPLY[@]}}\""],
        capture_output=True, text=True, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.splitlines() if w]


def test_bash_completion(prefix: Path, tmp_path: Path) -> None:
    script = prefix / "share/bash-completion/completions/qrexec-host"
    r = subprocess.run(["bash", "-c", f"source {script}; complete -p qrexec-host"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "complete -F _qrexec_host qrexec-host", r.stderr
    assert set(_complete(prefix, ["qrexec-host", "re"])) == {"reload", "remote"}
    assert _complete(prefix, ["qrexec-host", "rel"]) == ["reload"]
    assert set(_complete(prefix, ["qrexec-host", "s"])) == {"start", "stop", "shutdown"}
    assert set(_complete(prefix, ["qrexec-host", "list", "--f"])) == {"--fields", "--format"}
    assert "--since" in _complete(prefix, ["qrexec-host", "logs", "--s"])
    assert _complete(prefix, ["qrexec-host", "--st"]) == ["--state-dir"]
    config = tmp_path / "my.toml"
    config.write_text(default_layout(tmp_path))
    assert set(_complete(prefix, ["qrexec-host", f"--config={config}", "start", ""])) == {
        "dom0", "work", "vault", "other", "dvm"}
    assert _complete(prefix, ["qrexec-host", "--config", str(config), "prefs", "wo"]) == ["work"]
    (tmp_path / "qrexec-host.toml").write_text("[domains.here]\n")
    assert _complete(prefix, ["qrexec-host", "stop", "h"], cwd=tmp_path) == ["here"]


def _descendants(root: int) -> list[int]:
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    parents = {pid: parent_pid(pid) for pid in pids}
    found = {root}
    grew = True
    while grew:
        new = {pid for pid, parent in parents.items() if parent in found} - found
        grew = bool(new)
        found |= new
    return sorted(found - {root})


def test_the_units_command_runs_and_stops_cleanly(prefix: Path) -> None:
    """The unit's ExecStart, as systemd runs it (Type=notify, KillMode=mixed: SIGTERM to
    the main process alone), on a test config and state directory."""
    unit = (prefix / "lib/systemd/system/qrexec-host.service").read_text()
    start = re.search(r"^ExecStart=(.*)$", unit, re.M)
    assert start is not None
    argv = shlex.split(start.group(1))
    env_line = re.search(r"^Environment=(.*)$", unit, re.M)
    assert env_line is not None
    w = HostWorld("plain")
    argv = [a.replace("/etc/qrexec-host/qrexec-host.toml", str(w.config))
            .replace("/run/qrexec-host", str(w.state)) for a in argv]
    name = str(w.dir / "notify")
    notes = Notifications(name)
    env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": name}
    key, value = env_line.group(1).split("=", 1)
    env[key] = value
    # systemd starts the service in a session of its own, stdin /dev/null
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert notes.next().get("READY") == "1"
        children = _descendants(proc.pid)
        assert len(children) > 3  # daemon, agent, policy daemon and agent, …
        proc.send_signal(signal.SIGTERM)
        assert notes.next().get("STOPPING") == "1"
        assert proc.wait(60) == 0
        # stopped cleanly: nothing left for KillMode=mixed's SIGKILL
        assert [pid for pid in children if not process_gone(pid)] == []
        assert not (w.state / "qubesd.sock").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        notes.sock.close()
        w.close()
