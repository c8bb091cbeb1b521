"""The audit trail of the real qrexec-policy-daemon (docs/audit.md), driven over its sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from pyqrexec.policy.audit import (
    CALL_ADDRESS_PREFIX,
    DECISION_FIELDS,
    END_FIELDS,
    EndReport,
    end_report_text,
)

from .fixtures.fakes import query
from .fixtures.policy import PolicyDaemon
from .test_policy_daemon import W1, req


def audit_file(setup: PolicyDaemon) -> Path:
    return setup.tmp / "log" / "qrexec-audit.jsonl"


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of `path`, each of which must be one whole JSON object."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    out = []
    for line in data.split(b"\n")[:-1]:
        assert all(0x20 <= b < 0x7F for b in line), line  # escaped: nothing raw
        record = json.loads(line)
        assert isinstance(record, dict)
        out.append(record)
    return out


def query_as(path: str, data: bytes, call: bytes) -> bytes:
    """A request from a connection bound to `call`'s abstract address (what qrexec-daemon does)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(CALL_ADDRESS_PREFIX + call)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def send(path: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the daemon closes once it has the whole report


def test_ten_thousand_decisions_ten_thousand_lines(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", "test.Svc * work vault allow\ntest.Svc * @anyvm @anyvm deny\n")
    setup.log_file = setup.tmp / "daemon.log"
    setup.start()
    n = 10_000
    for i in range(n):
        source = "work" if i % 2 == 0 else "personal"
        answer = query(setup.socket, req(source, "vault", f"test.Svc+n{i}"))
        assert answer.startswith(b"user=DEFAULT\nresult=allow\n" if i % 2 == 0 else b"result=deny")
    found = records(audit_file(setup))
    assert len(found) == n
    assert len({r["call"] for r in found}) == n
    for i, record in enumerate(found):
        assert tuple(record) == DECISION_FIELDS
        assert record["event"] == "decision"
        assert record["argument"] == f"+n{i}"
        assert record["service"] == "test.Svc"
        assert record["time"].endswith("Z")
        if i % 2 == 0:
            assert record["source"] == "work" and record["decision"] == "allow"
            assert record["target"] == "vault"
            assert record["target_uuid"] == "uuid:33333333-3333-3333-3333-333333333333"
            assert record["rule"].endswith("30-user.policy:1")
        else:
            assert record["source"] == "personal" and record["decision"] == "deny"
            assert record["target"] is None and record["reason"] == "denied by policy " + (
                record["rule"])
            assert record["rule"].endswith("30-user.policy:2")
        assert record["asked"] is False and record["grant"] is None


def test_hostile_names_cannot_break_a_line(setup: PolicyDaemon) -> None:
    """Quotes, backslashes and braces in answered requests; newlines, CR, escapes, NUL and
    non-UTF-8 bytes in refused ones: every one is one record on one line."""
    setup.write("30-user.policy", "test.Svc * @anyvm @anyvm deny\n")
    setup.start()
    answered = ['test.Svc+a"b', 'test.Svc+\\"}{"event":"x"', "test.Svc+'\\n'", "x\"}\n{"]
    for service in answered[:3]:
        assert query(setup.socket, req("work", 'va"ult', service)) == b"result=deny"
    refused = [
        b"source=work\nintended_target=vault\xff\xfe\nservice_and_arg=test.Svc\n\n",
        b"source=wo\rrk\nintended_target=vault\nservice_and_arg=test.Svc\n\n",
        b"source=work\x1b[2J\nintended_target=v\x00\nservice_and_arg=\xe2\x80\xa8\n\n",
        b'source=work\nintended_target={"event":"decision"}\n\xc3(\n\n',
        b"source=work\n" + answered[3].encode() + b"=1\n\n",
    ]
    for data in refused:
        assert query(setup.socket, data) == b""
    # a call id that is not ours (not hex) is ignored, and one is made up
    assert query_as(setup.socket, req("work", "vault", "test.Svc"), b'0"\n{}\n') == b"result=deny"
    found = records(audit_file(setup))
    assert len(found) == 3 + len(refused) + 1
    for record, service in zip(found[:3], answered, strict=False):
        assert record["event"] == "decision"
        assert record["intended_target"] == 'va"ult'
        assert "test.Svc" + record["argument"] == service
    for record, data in zip(found[3:8], refused, strict=True):
        assert record["event"] == "refused"
        assert tuple(record) == ("time", "event", "call", "reason", "request")
        assert record["request"] == data[:-1].decode("utf-8", "backslashreplace")
    assert len(found[-1]["call"]) == 16


def test_rotation_mid_run_loses_nothing(setup: PolicyDaemon) -> None:
    """Moved away (as logrotate does) with and without SIGHUP, while four clients query."""
    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    setup.log_file = setup.tmp / "daemon.log"
    setup.start()
    assert setup.proc is not None
    path = audit_file(setup)
    per_client, clients = 1500, 4
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            for i in range(per_client):
                assert query(setup.socket, req("work", "vault", f"test.Svc+c{k}n{i}")) == W1
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    rotated = []
    for r in range(6):
        # rotate each time the current file has grown: lines are being written meanwhile
        while not path.exists() or path.stat().st_size < 2000:
            if not any(t.is_alive() for t in threads):
                break
            time.sleep(0.001)  # polling the file's size, not waiting for an event
        if not path.exists():
            break
        target = path.with_name(f"qrexec-audit.jsonl.{r}")
        os.rename(path, target)
        rotated.append(target)
        if r % 2:
            setup.proc.send_signal(signal.SIGHUP)
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(rotated) >= 2  # one moved without SIGHUP, one with
    found = [rec for p in [*rotated, path] if p.exists() for rec in records(p)]
    arguments = sorted(rec["argument"] for rec in found)
    expected = sorted(f"+c{k}n{i}" for k in range(clients) for i in range(per_client))
    assert arguments == expected  # none lost, none twice
    assert "cannot write the audit trail" not in setup.stop()


def test_end_reports_join_their_decision(setup: PolicyDaemon) -> None:
    """What a qrexec-daemon's worker sends; junk on the end socket is ignored."""
    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    setup.start()
    end_socket = str(setup.tmp / "policy-audit.sock")
    call = b"0123456789abcdef"
    assert query_as(setup.socket, req("work", "vault", "test.Svc+x"), call) == W1
    for junk in (b"", b"begin\ncall=0123456789abcdef\n\n", b"end\ncall=zz\n\n", b"\xff" * 5000,
                 b"end\ncall=0123456789abcdef\nscope=call\nduration_ms=-1\nstatus=0\n\n"):
        send(end_socket, junk)
    report = EndReport(call.decode(), "call", 42, 0)
    send(end_socket, end_report_text(report))
    # the daemon still answers, and wrote the end once, after its decision
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    found = records(audit_file(setup))
    assert [r["event"] for r in found] == ["decision", "end", "decision"]
    decision, end, _ = found
    assert decision["call"] == end["call"] == call.decode()
    assert tuple(end) == END_FIELDS
    assert (end["source"], end["target"], end["service"], end["argument"]) == (
        "work", "vault", "test.Svc", "+x")
    assert (end["scope"], end["duration_ms"], end["status"]) == ("call", 42, 0)
    assert end["bytes_in"] is None and end["bytes_out"] is None


def test_without_audit_no_file_and_no_end_socket(setup: PolicyDaemon) -> None:
    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    setup.start("--no-audit")
    assert query(setup.socket, req("work", "vault", "test.Svc")) == W1
    assert not audit_file(setup).exists()
    assert not (setup.tmp / "policy-audit.sock").exists()


def test_qrexec_audit_filters_and_escapes(setup: PolicyDaemon) -> None:
    from .fixtures.processes import program

    setup.write("30-user.policy", "test.Svc * work vault allow\ntest.Svc * @anyvm @anyvm deny\n")
    setup.start()
    assert query(setup.socket, req("work", "vault", "test.Svc+a")) == W1
    assert query(setup.socket, req("personal", "vault", "test.Svc+b")) == b"result=deny"
    assert query(setup.socket, b"source=work\x1b[2J\nintended_target=v\n\n") == b""

    def audit(*args: str) -> str:
        done = subprocess.run([*program("qrexec_audit"), "--file", str(audit_file(setup)),
                               *args], env=setup.env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    [line] = audit("--decision", "allow").splitlines()
    assert "work -> vault  test.Svc+a  allow" in line
    [line] = audit("--source", "personal", "--json").splitlines()
    assert json.loads(line)["argument"] == "+b"
    assert audit("--service", "test.Svc+b").count("\n") == 1
    assert audit("--target", "vault", "--since", "2000-01-01").count("\n") == 2
    assert audit("--until", "2000-01-01") == ""
    [line] = audit("--event", "refused").splitlines()
    assert "\x1b" not in line and "\\u001b" in line


def test_qrexec_audit_follow_across_a_rotation(setup: PolicyDaemon) -> None:
    """`qrexec-audit --follow` prints new records as they come, including those the daemon
    still writes to the moved file before it notices the move, and then the new file's."""
    import queue

    from .fixtures.processes import program

    setup.write("30-user.policy", "test.Svc * work vault allow\n")
    setup.start()
    assert setup.proc is not None
    path = audit_file(setup)
    assert query(setup.socket, req("work", "vault", "test.Svc+first")) == W1
    follower = subprocess.Popen(
        [*program("qrexec_audit"), "--file", str(path), "--follow", "--json"],
        env=setup.env, stdout=subprocess.PIPE)
    assert follower.stdout is not None
    lines: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in follower.stdout or ()])
    reader.start()
    try:
        def next_argument() -> str:
            return str(json.loads(lines.get(timeout=20))["argument"])

        assert next_argument() == "+first"
        os.rename(path, path.with_name("qrexec-audit.jsonl.1"))
        # written to the moved file: the daemon has not looked at the path again yet
        assert query(setup.socket, req("work", "vault", "test.Svc+moved")) == W1
        assert not path.exists()
        setup.proc.send_signal(signal.SIGHUP)  # the daemon opens a new file at once
        deadline = time.monotonic() + 20
        while not path.exists():
            assert time.monotonic() < deadline, "no new file after SIGHUP"
            time.sleep(0.005)
        for i in range(3):
            assert query(setup.socket, req("work", "vault", f"test.Svc+new{i}")) == W1
        # the follower reads what remained in the moved file before it turns to the new one
        assert [next_argument() for _ in range(4)] == ["+moved", "+new0", "+new1", "+new2"]
    finally:
        follower.terminate()
        follower.wait(10)
        reader.join(10)
