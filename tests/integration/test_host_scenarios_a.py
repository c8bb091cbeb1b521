"""Everyday calls between domains (the tests `test_s1_…` to `test_s12_…`) end to end through
`qrexec-host`, in bubblewrap sandboxes and as plain processes.

The fixture is tests/data/policy-system-info.json (uuids, guivm, tags, template_for_dispvms), with
agents in non-root mode (as the test user, or `nobody` when the tests run as root) and the
policy agent's asks answered by a program that records its input and replies with the
content of the world's `answer` file. qrexec-host assigns domids at start (work, personal,
sys-usb are started in that order, so work < personal < sys-usb; a domain started later gets
a higher one): where a test needs domids (S4, S11, S12) it computes what the rules (the port
parity of docs/reference/protocol.md#data-ports, the socket names of
docs/reference/protocol.md#transport) give for the actual ones. qubesd requests are observed through
qrexec-host's log line per request (`qubesd: admin.vm.Start uuid:… -> ok`).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyqrexec.protocol.constants import MsgType
from pyqrexec.protocol.messages import HEADER, hello
from pyqrexec.transport.unixsock import listen_unix

from .fixtures.host import HostWorld, executable, python_in_domain
from .fixtures.hostile import RawClient, recv_exact
from .fixtures.processes import wait_for

UUIDS = {name: str(n) * 8 + "-" + "-".join([str(n) * 4] * 3) + "-" + str(n) * 12
         for n, name in enumerate(["dom0", "work", "personal", "vault", "default-dvm",
                                   "anon-dvm", "sys-usb"])}
EXIT, STDIN, STDOUT, STDERR = (MsgType.DATA_EXIT_CODE, MsgType.DATA_STDIN, MsgType.DATA_STDOUT,
                               MsgType.DATA_STDERR)
#: the agents' account: non-root mode (as root, `nobody`; otherwise the test user himself)
USER = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

TEST_SVC = """#!/bin/sh
echo "test.Svc in $(hostname) domid ${VCHAN_DOMAIN:-?} path $0 from $QREXEC_REMOTE_DOMAIN"
"""


def scenario_layout(top: Path) -> str:
    roots = ["dom0", "work", "personal", "vault", "default-dvm", "anon-dvm", "sys-usb",
             "anotherVM"]
    for name in roots:
        (top / name).mkdir()
    (top / "dom0/etc/qubes/policy.d").mkdir(parents=True)
    (top / "dom0/etc/qubes-rpc/policy").mkdir(parents=True)
    # S1: the HOWTO's test.Add example
    executable(top / "anotherVM/etc/qubes-rpc/test.Add",
               "#!/bin/sh\nread arg1 arg2\necho $(($arg1+$arg2))\n")
    executable(top / "work/usr/bin/our_test_add_client", "#!/bin/sh\necho $1 $2\nexec cat >&2\n")
    # S3: the same client, leaving a trace when it starts (inside work: its own /tmp)
    executable(top / "work/usr/bin/our_marked_client",
               f"#!/bin/sh\ntouch /tmp/{top.name}-client-started\n"
               'exec our_test_add_client "$@"\n')  # on PATH: plain mode too
    for name in ("vault", "sys-usb", "default-dvm"):
        executable(top / name / "etc/qubes-rpc/test.Svc", TEST_SVC)
    executable(top / "personal/etc/qubes-rpc/test.Cat", "#!/bin/sh\nexec cat\n")
    executable(top / "dom0/etc/qubes-rpc/test.Env", "#!/bin/sh\nenv\n")
    executable(top / "answer-program",
               f"#!/bin/sh\ncat >'{top}/ask.json'\ncat '{top}/answer'\n")
    (top / "answer").write_text("deny\n")
    user = f'user = "{USER}"\n'
    return f"""\
[domains.dom0]
default_dispvm = "default-dvm"

[domains.work]
uuid = "{UUIDS['work']}"
tags = ["work"]
autostart = true
{user}
[domains.personal]
uuid = "{UUIDS['personal']}"
autostart = true
{user}
[domains.sys-usb]
uuid = "{UUIDS['sys-usb']}"
guivm = ""
default_dispvm = ""
autostart = true
{user}
[domains.vault]
uuid = "{UUIDS['vault']}"
tags = ["secret"]
label = "black"
default_dispvm = ""
{user}
[domains.default-dvm]
uuid = "{UUIDS['default-dvm']}"
tags = ["work"]
label = "gray"
template_for_dispvms = true
{user}
[domains.anon-dvm]
uuid = "{UUIDS['anon-dvm']}"
tags = ["anon"]
default_dispvm = "anon-dvm"
template_for_dispvms = true
{user}
[domains.anotherVM]
label = "green"
{user}"""


pytestmark = pytest.mark.host_world(
    layout=scenario_layout,
    up_args=lambda w: [f"--policy-agent-arg=--answer-program={w.dir / 'answer-program'}"])


@pytest.fixture
def policy(host_world: HostWorld) -> Callable[..., None]:
    """Empty policy but the shipped compat file; `policy(name=text, …)` writes
    `policy.d/NAME.policy` files, `policy(legacy={SERVICE: text})` legacy files."""
    etc = host_world.dir / "dom0/etc/qubes/policy.d"
    legacy_dir = host_world.dir / "dom0/etc/qubes-rpc/policy"
    for d in (etc, legacy_dir):
        for f in d.iterdir():
            f.unlink()
    (etc / "35-compat.policy").write_text("!compat-4.0\n")

    def write(legacy: dict[str, str] | None = None, **files: str) -> None:
        for name, text in files.items():
            (etc / f"{name}.policy").write_text(text)
        for name, text in (legacy or {}).items():
            (legacy_dir / name).write_text(text)

    return write


def answer(host_world: HostWorld, reply: str) -> None:
    (host_world.dir / "answer").write_text(reply + "\n")
    (host_world.dir / "ask.json").unlink(missing_ok=True)


def ensure(host_world: HostWorld, name: str, running: bool) -> None:
    if (host_world.domains()[name]["state"] == "Running") != running:
        assert host_world.host("start" if running else "stop", name).returncode == 0


def since(host_world: HostWorld, mark: int) -> list[str]:
    """qrexec-host's log lines written after `mark` (= len(host_world.log()) back then)."""
    return host_world.log()[mark:].splitlines()


def qubesd_lines(lines: list[str]) -> list[str]:
    return [line.split("qubesd: ", 1)[1] for line in lines if "qubesd: " in line]


def policy_log(host_world: HostWorld) -> str:
    return (host_world.state / "log" / "policy-daemon.log").read_text(errors="replace")


def ran_in(host_world: HostWorld, out: bytes, name: str, domid: int | None = None) -> None:
    """`out` is TEST_SVC's line from domain `name` called by work."""
    text = out.decode()
    assert text.endswith(" from work\n"), text
    assert f" domid {host_world.domid(name) if domid is None else domid} " in text, text
    if host_world.sandbox == "bubblewrap":
        assert text.startswith(f"test.Svc in {name} "), text  # its own UTS namespace
    else:
        assert f"/{name}/etc/qubes-rpc/test.Svc from" in text, text


def refused(done: subprocess.CompletedProcess[bytes]) -> None:
    assert done.returncode == 126, done
    assert b"Request refused" in done.stderr, done


# -- raw protocol peers ------------------------------------------------------------------------
#: a qrexec-client-vm that records the data channel: run inside a domain with
#: AGENT TARGET SERVICE [STDIN]; prints JSON (exec params, socket path, messages)
RAW_CALLER = r"""
import json, socket, struct, sys
from pyqrexec.protocol.messages import HEADER, hello, pack_trigger4
from pyqrexec.system.environment import Environment
from pyqrexec.transport import vchan
agent, target, service = sys.argv[1:4]
data = sys.argv[4].encode() if len(sys.argv) > 4 else b""
def exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            return None
        b += c
    return b
trig = socket.socket(socket.AF_UNIX)
trig.connect(agent)
trig.sendall(pack_trigger4(service.encode(), target.encode(), b"SOCKET"))
params = exact(trig, 8)
if params is None:
    print(json.dumps({"refused": True}))
    sys.exit(0)
peer, port = struct.unpack("<II", params)
env = Environment.current()
listener, path = vchan.listen(env.vchan_socket_dir, env.vchan_domain, peer, port,
                              pair_dirs=env.vchan_pair_dirs)
conn = vchan.accept_one(listener, path, 30)
pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
peer_domain = None  # the connecting process's domain, when it is visible from here
try:
    with open(f"/proc/{pid}/environ", "rb") as f:
        for var in f.read().split(b"\0"):
            if pid > 0 and var.startswith(b"VCHAN_DOMAIN="):
                peer_domain = int(var[13:])
except OSError:
    pass
conn.sendall(hello(4) + (HEADER.pack(0x190, len(data)) + data if data else b"")
             + HEADER.pack(0x190, 0))
messages = []
while True:
    head = exact(conn, 8)
    if head is None:
        break
    t, n = HEADER.unpack(head)
    messages.append([t, exact(conn, n).hex()])
    if t == 0x193:
        break
print(json.dumps({"peer": peer, "port": port, "path": path, "peer_pid": pid,
                  "peer_domain": peer_domain, "messages": messages}))
"""


def raw_call(host_world: HostWorld, source: str, target: str, service: str,
             data: str = "") -> dict[str, object]:
    done = host_world.in_domain(source, [*python_in_domain(RAW_CALLER), "{AGENT}", target, service,
                                    *([data] if data else [])])
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, object] = json.loads(done.stdout)
    return result


def messages(result: dict[str, object]) -> list[tuple[int, bytes]]:
    raw = result["messages"]
    assert isinstance(raw, list)
    return [(t, bytes.fromhex(p)) for t, p in raw]


def request(client: RawClient, msgtype: int, domain: int, cmd: bytes) -> tuple[int, int, int]:
    """A port-0 request on a fresh raw daemon-socket client; (type, domid, port) of the reply."""
    client.hello()
    client.request(msgtype, domain, 0, cmd)
    return client.reply()


def serve_data(path: Path, timeout: float = 30) -> list[tuple[int, bytes]]:
    """Be the caller side (server) of a data channel at `path` (host path): HELLO, STDIN EOF,
    then every message up to EXIT_CODE."""
    listener = listen_unix(str(path), mode=0o666, backlog=1)
    try:
        listener.settimeout(timeout)
        conn, _ = listener.accept()
    finally:
        listener.close()
        path.unlink(missing_ok=True)
    got: list[tuple[int, bytes]] = []
    with conn:
        conn.settimeout(timeout)
        conn.sendall(hello(4) + HEADER.pack(STDIN, 0))
        while not got or got[-1][0] != EXIT:
            t, n = HEADER.unpack(recv_exact(conn, 8))
            got.append((t, recv_exact(conn, n)))
    return got


def pair_dir(host_world: HostWorld, a: int, b: int) -> Path:
    """The host directory of the vchan pair (a, b): made in the older (lower) domid's view."""
    return host_world.state / "vchan" / str(min(a, b)) / str(max(a, b))


def calls_ended(host_world: HostWorld, name: str) -> bool:
    """Every call `name`'s agent started has ended: a handler's end for each `executed` line.
    The call process logs that end, then the agent reports it to the daemon
    (CONNECTION_TERMINATED), which frees the call's port a moment later."""
    text = (host_world.state / "log" / f"agent.{name}.log").read_text(errors="replace")
    ended = len(re.findall(r"call handled by pid \d+ ended with", text))
    return ended >= len(re.findall(r"executed(?: \(nowait\))?: ", text))


def serve_and_release(host_world: HostWorld, client: RawClient, own: int, peer: int,
                      port: int) -> list[tuple[int, bytes]]:
    """Play `peer`'s caller on the port `client` was handed by domain `own`'s daemon: the
    handler connects and runs, its agent sends CONNECTION_TERMINATED{peer, port}, the daemon
    frees the port and closes `client`. The messages served, HELLO first."""
    got = serve_data(pair_dir(host_world, peer, own) / f"vchan.{peer}.{own}.{port}.sock")
    assert client.closed()
    client.close()
    return got


def first_port(host_world: HostWorld, name: str, peer: int, port: int, command: bytes,
               ) -> RawClient:
    """A raw client `name`'s daemon handed `port` for `peer`, asked for once the calls before
    have given their ports back. Their end is logged before the daemon hears of it
    (calls_ended), so a request in that moment is handed a higher port: that call is served
    to its end, which frees its port, and the request made again."""
    wait_for(lambda: calls_ended(host_world, name), 10, f"{name}'s calls to end")
    own = host_world.domid(name)
    deadline = time.monotonic() + 10
    while True:
        client = RawClient(host_world, name)
        got = request(client, MsgType.EXEC_CMDLINE, peer, command)
        if got == (MsgType.EXEC_CMDLINE, own, port):
            return client
        assert got[:2] == (MsgType.EXEC_CMDLINE, own) and got[2] > port, (got, port)
        assert time.monotonic() < deadline, f"{name}'s daemon still holds port {port}"
        serve_and_release(host_world, client, own, peer, got[2])


def expected_port(own: int, peer: int, used: set[int]) -> int:
    """The port a daemon of domid `own` allocates for `peer`
    (docs/reference/protocol.md#data-ports)."""
    first, step = (0, 1) if peer == 0 else (1, 2) if peer > own else (0, 2)
    return next(513 + i for i in range(first, 256, step) if 513 + i not in used)


def without_hello(got: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    assert got[0][0] == MsgType.HELLO, got
    return got[1:]


# -- A. end-to-end calls -----------------------------------------------------------------------
S1_CALL = ["work", "anotherVM", "test.Add", "/usr/bin/our_test_add_client"]


@pytest.mark.parametrize("anyvm", ["$anyvm", "anyvm"])
def test_s1_readme_howto(host_world: HostWorld, policy: Callable[..., None], anyvm: str) -> None:
    """S1, and S40: the legacy file with bare `anyvm` succeeds exactly as with `$anyvm`."""
    policy(legacy={"test.Add": f"{anyvm} {anyvm} ask\n"})
    answer(host_world, "allow:anotherVM")
    ensure(host_world, "anotherVM", running=False)
    logged = len(policy_log(host_world))  # the module's world logs every test's calls
    done = host_world.host("call", *S1_CALL, "11", "22")
    assert done.returncode == 0, done.stderr
    assert b"33\n" in done.stderr
    asked = json.loads((host_world.dir / "ask.json").read_text())
    assert asked["source"] == "work" and asked["service"] == "test.Add"
    assert asked["argument"] == "+" and asked["default_target"] == ""
    assert "anotherVM" in asked["targets"]
    assert host_world.domains()["anotherVM"]["state"] == "Running"
    assert "qrexec: test.Add+: work -> anotherVM: allowed to anotherVM" in \
        policy_log(host_world)[logged:]


def test_s2_current_policy(host_world: HostWorld, policy: Callable[..., None]) -> None:
    policy(**{"30-test": "test.Add * * * ask\n"})
    answer(host_world, "allow:anotherVM")
    done = host_world.host("call", *S1_CALL, "1", "2")
    assert done.returncode == 0, done.stderr
    assert done.stderr.endswith(b"3\n") and b"33" not in done.stderr, done.stderr


def test_s3_denied_by_the_user(host_world: HostWorld, policy: Callable[..., None]) -> None:
    policy(legacy={"test.Add": "$anyvm $anyvm ask\n"})
    answer(host_world, "deny")
    ensure(host_world, "anotherVM", running=False)
    mark = len(host_world.log())
    done = host_world.host("call", "work", "anotherVM", "test.Add", "/usr/bin/our_marked_client",
                      "11", "22")
    refused(done)
    assert json.loads((host_world.dir / "ask.json").read_text())["source"] == "work"  # asked
    # the client program never started (work's agent got SERVICE_REFUSED for the request,
    # closed qrexec-client-vm's socket: refusal instead of a data port)
    marker = f"/tmp/{host_world.dir.name}-client-started"
    assert host_world.in_domain("work", ["test", "-e", marker]).returncode == 1
    assert host_world.domains()["anotherVM"]["state"] == "Halted"
    uuid = host_world.domains()["anotherVM"]["uuid"]
    assert not [q for q in qubesd_lines(since(host_world, mark))
                if q.startswith("admin.vm.Start") and ("anotherVM" in q or f"{uuid}" in q)]
    assert "work -> anotherVM: denied: denied by the user" in policy_log(host_world)
    # the marker works: allowed, the same client leaves it
    answer(host_world, "allow:anotherVM")
    done = host_world.host("call", "work", "anotherVM", "test.Add", "/usr/bin/our_marked_client",
                      "11", "22")
    assert done.returncode == 0 and b"33\n" in done.stderr, done
    assert host_world.in_domain("work", ["rm", marker]).returncode == 0


def test_s4_dom0_runs_a_command(host_world: HostWorld) -> None:
    done = host_world.host("run", "work", "--", "echo hello")
    assert (done.returncode, done.stdout) == (0, b"hello\n"), done.stderr
    done = host_world.client("-d", "work", "DEFAULT:echo hello")
    assert (done.returncode, done.stdout) == (0, b"hello\n"), done.stderr
    # the same through a raw client: EXEC_CMDLINE{0,0} -> {work, 513}, once the calls above
    # have given their port back
    work = host_world.domid("work")
    command = b"DEFAULT:echo hello\0"

    def run(client: RawClient) -> None:
        got = without_hello(serve_and_release(host_world, client, work, 0, 513))
        assert got[0] == (STDOUT, b"hello\n")  # the two EOFs in any order, EXIT_CODE last
        assert sorted(got[1:3]) == [(STDOUT, b""), (STDERR, b"")]
        assert got[3:] == [(EXIT, struct.pack("<i", 0))]

    run(first_port(host_world, "work", 0, 513, command))
    # the daemon closed that client when work's agent reported the call's end: 513 is free again
    client = RawClient(host_world, "work")
    assert request(client, MsgType.EXEC_CMDLINE, 0, command) == (MsgType.EXEC_CMDLINE, work, 513)
    run(client)


def test_s5_remote_exit_status(host_world: HostWorld) -> None:
    assert host_world.client("-d", "work", "DEFAULT:exit 42").returncode == 42
    assert host_world.client("-E", "-d", "work", "DEFAULT:exit 42").returncode == 0
    assert host_world.host("run", "work", "--", "exit 42").returncode == 42


def test_s6_just_exec(host_world: HostWorld) -> None:
    marker = f"/tmp/{host_world.dir.name}-s6-{host_world.sandbox}"
    # the command waits on a FIFO the test holds: -e returns while it still runs
    fifo = f"{marker}.go"
    assert host_world.in_domain("work", ["mkfifo", "-m", "666", fifo]).returncode == 0
    done = host_world.client("-e", "-d", "work", f"DEFAULT:read x < {fifo}; touch {marker}",
                             timeout=30)
    assert done.returncode == 0, done.stderr
    assert host_world.client("-e", "-d", "work", "DEFAULT:QUBESRPC no.Such dom0").returncode == 127
    # on the data channel the agent sends only EXIT_CODE
    work = host_world.domid("work")
    for cmd, status in ((b"DEFAULT:QUBESRPC no.Such dom0\0", 127), (b"DEFAULT:true\0", 0)):
        client = RawClient(host_world, "work")
        t, domid, port = request(client, MsgType.JUST_EXEC, 0, cmd)
        assert (t, domid) == (MsgType.JUST_EXEC, work)
        got = serve_data(pair_dir(host_world, 0, work) / f"vchan.0.{work}.{port}.sock")
        assert without_hello(got) == [(EXIT, struct.pack("<i", status))]
        assert client.closed()
        client.close()
    assert host_world.in_domain("work", ["test", "-e", marker]).returncode == 1
    # opening the FIFO for writing waits for the command to have it open for reading
    assert host_world.in_domain("work", ["sh", "-c", f"echo go > {fifo}"],
                                timeout=30).returncode == 0
    wait_for(lambda: host_world.in_domain("work", ["test", "-e", marker]).returncode == 0, 10,
             "the just-exec'd command to finish")
    host_world.in_domain("work", ["rm", "-f", marker, fifo])


def test_s7_autostart(host_world: HostWorld, policy: Callable[..., None]) -> None:
    policy(**{"30-test": "test.Svc * work vault allow\n"})
    ensure(host_world, "vault", running=False)
    mark = len(host_world.log())
    done = host_world.host("call", "work", "vault", "test.Svc")
    assert done.returncode == 0, done.stderr
    ran_in(host_world, done.stdout, "vault")
    assert f"admin.vm.Start uuid:{UUIDS['vault']} -> ok" in qubesd_lines(since(host_world, mark))
    assert host_world.domains()["vault"]["state"] == "Running"
    assert (host_world.state / "qubes" / "qrexec.vault").exists()
    assert any(line.startswith("qrexec-host: vault started") for line in since(host_world, mark))


def test_s8_autostart_no(host_world: HostWorld, policy: Callable[..., None]) -> None:
    policy(**{"30-test": "test.Svc * work vault allow autostart=no\n"
                         "test.Svc * work sys-usb allow autostart=no\n"})
    ensure(host_world, "vault", running=False)
    ensure(host_world, "sys-usb", running=True)
    mark = len(host_world.log())
    refused(host_world.host("call", "work", "vault", "test.Svc"))
    assert not [q for q in qubesd_lines(since(host_world, mark))
                if q.startswith("admin.vm.Start") and (UUIDS["vault"] in q or "vault" in q)]
    assert host_world.domains()["vault"]["state"] == "Halted"
    done = host_world.host("call", "work", "sys-usb", "test.Svc")
    assert done.returncode == 0, done.stderr
    ran_in(host_world, done.stdout, "sys-usb")


def test_s9_vm_to_dom0_keyword_target(host_world: HostWorld, policy: Callable[..., None]) -> None:
    policy(**{"30-test": "test.Env * work @adminvm allow\ntest.Env * work dom0 allow\n"})
    done = host_world.host("call", "work", "@adminvm", "test.Env")
    assert done.returncode == 0, done.stderr
    env = done.stdout.decode().splitlines()
    for line in ("QREXEC_REMOTE_DOMAIN=work", "QREXEC_SERVICE_FULL_NAME=test.Env+",
                 "QREXEC_SERVICE_ARGUMENT=", "QREXEC_REQUESTED_TARGET_TYPE=keyword",
                 "QREXEC_REQUESTED_TARGET_KEYWORD=adminvm"):
        assert line in env, env
    assert not [v for v in env if v.startswith("QREXEC_REQUESTED_TARGET=")], env
    # the first message after HELLO is STDERR with len 0
    result = raw_call(host_world, "work", "@adminvm", "test.Env")
    got = without_hello(messages(result))
    assert got[0] == (STDERR, b""), got
    assert got[-1] == (EXIT, struct.pack("<i", 0))
    assert b"QREXEC_REQUESTED_TARGET_KEYWORD=adminvm\n" in b"".join(
        p for t, p in got if t == STDOUT)
    done = host_world.host("call", "work", "dom0", "test.Env")
    assert done.returncode == 0, done.stderr
    env = done.stdout.decode().splitlines()
    assert "QREXEC_REQUESTED_TARGET_TYPE=name" in env and "QREXEC_REQUESTED_TARGET=dom0" in env


@pytest.mark.parametrize("target", ["@dispvm", "$dispvm"])
def test_s10_disposable(host_world: HostWorld, policy: Callable[..., None], target: str) -> None:
    policy(**{"30-test": "test.Svc * work @dispvm allow\n"})
    mark = len(host_world.log())
    done = host_world.host("call", "work", target, "test.Svc")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: any("admin.vm.Kill" in q for q in qubesd_lines(since(host_world, mark))), 20,
             "the disposable to be killed")
    # (`qrexec-host call` itself starts work first if needed)
    requests = [q for q in qubesd_lines(since(host_world, mark))
                if not q.startswith("admin.vm.Start work ")]
    create = f"admin.vm.CreateDisposable uuid:{UUIDS['default-dvm']} payload=uuid -> ok uuid:"
    assert requests[0].startswith(create), requests
    new = requests[0][len(create) - 5:]
    assert requests[1:] == [f"admin.vm.Start {new} -> ok", f"admin.vm.Kill {new} -> ok"]
    # the service ran in the new dispN
    started = [line for line in since(host_world, mark) if " started (domid " in line]
    assert len(started) == 1 and started[0].startswith("qrexec-host: disp"), started
    name = started[0].split()[1]
    domid = started[0].rsplit(" ", 1)[1].rstrip(")")
    ran_in(host_world, done.stdout, name, int(domid))
    assert name not in host_world.domains()


def test_s11_port_parity(host_world: HostWorld) -> None:
    """The port parity rule against work's daemon with the actual domids: peers above work get
    even slots, a released port is handed out again, dom0 gets 513."""
    for name in ("work", "personal", "sys-usb"):
        ensure(host_world, name, running=True)
    own, low, high = (host_world.domid(n) for n in ("work", "personal", "sys-usb"))
    assert own < low < high
    command = b"DEFAULT:echo s11\0"
    used: set[int] = set()

    def allocate(peer: int) -> tuple[RawClient, int]:
        client = RawClient(host_world, "work")
        t, domid, port = request(client, MsgType.EXEC_CMDLINE, peer, command)
        assert (t, domid) == (MsgType.EXEC_CMDLINE, own)
        assert port == expected_port(own, peer, used), (peer, port, used)
        used.add(port)
        return client, port

    def serve(client: RawClient, peer: int, port: int) -> None:
        got = serve_and_release(host_world, client, own, peer, port)
        assert without_hello(got)[0] == (STDOUT, b"s11\n")
        assert got[-1] == (EXIT, struct.pack("<i", 0))
        used.discard(port)

    p1 = expected_port(own, low, used)
    first = first_port(host_world, "work", low, p1, command)
    used.add(p1)
    second, p2 = allocate(high)
    assert (p1, p2) == (514, 516)
    serve(first, low, p1)
    again, p3 = allocate(low)
    assert p3 == 514
    dom0, p4 = allocate(0)
    assert p4 == 513
    for client, peer, port in ((again, low, p3), (second, high, p2), (dom0, 0, p4)):
        serve(client, peer, port)


def test_s12_direct_vm_to_vm(host_world: HostWorld, policy: Callable[..., None]) -> None:
    policy(**{"30-test": "test.Cat * work personal allow\n"})
    ensure(host_world, "personal", running=True)
    work, personal = host_world.domid("work"), host_world.domid("personal")
    assert work < personal
    done = host_world.host("call", "work", "personal", "test.Cat", input=b"through personal\n")
    assert (done.returncode, done.stdout) == (0, b"through personal\n"), done.stderr
    # personal's daemon allocates for peer work < personal: the odd slots, first free = 513,
    # once the call above has given it back (a call in between gets a higher one, as in
    # first_port, and gives that back in turn)
    wait_for(lambda: calls_ended(host_world, "personal"), 10, "personal's calls to end")
    deadline = time.monotonic() + 10
    result = raw_call(host_world, "work", "personal", "test.Cat", "raw data\n")
    while result["port"] != 513 and time.monotonic() < deadline:
        result = raw_call(host_world, "work", "personal", "test.Cat", "raw data\n")
    assert (result["peer"], result["port"]) == (personal, 513)
    path = Path(str(result["path"]))
    # work listened on vchan.<work>.<personal>.513.sock in its directory of the pair
    assert path.name == f"vchan.{work}.{personal}.513.sock"
    assert path.parent.name == str(personal)
    got = without_hello(messages(result))
    assert [m for m in got if m[0] == STDOUT] == [(STDOUT, b"raw data\n"), (STDOUT, b"")]
    assert got[-1] == (EXIT, struct.pack("<i", 0))
    # no dom0 process can open it: the pair directory is not in dom0's vchan view
    assert pair_dir(host_world, work, personal).is_dir()
    assert not any(p.name.startswith(f"vchan.{work}.{personal}.")
                   for p in (host_world.state / "vchan" / "0").rglob("*"))
    if host_world.sandbox == "plain":
        # the connecting process is personal's handler
        assert result["peer_pid"] != 0 and result["peer_domain"] == personal, result
    else:
        # not a process of work's sandbox (dom0 is outside every sandbox: the pair directory
        # above is what keeps it out)
        assert result["peer_pid"] == 0, result
