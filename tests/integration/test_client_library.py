"""The client library (`pyqrexec.api`, docs/client-library.md) against real daemons and
agents: every behaviour the CLIs have, from dom0 and from inside a domain."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from pyqrexec.api import (
    AsyncDom0Client,
    AsyncDomainClient,
    CallAborted,
    CallFailed,
    CallRefused,
    CallTimeout,
    DaemonNotRunning,
    Dom0Client,
    DomainClient,
)
from pyqrexec.system.environment import Environment

from .fixtures.processes import QrexecHost, wait_for
from .fixtures.wiretap import HELLO, STDIN, tapped_world
from .fixtures.world import World

MIB = 1 << 20


@pytest.fixture
def world(world: World) -> World:
    """The conftest's world (work 5, anotherVM 7) with the services the tests call."""
    w = world
    w.service("anotherVM", "test.Echo",
              "#!/bin/sh\necho \"$QREXEC_REMOTE_DOMAIN $QREXEC_SERVICE_FULL_NAME\"\n"
              "tr a-z A-Z\necho err >&2\nexit 3\n")
    w.service("anotherVM", "test.Cat", "#!/bin/sh\nexec cat\n")
    w.service("work", "test.Cat", "#!/bin/sh\nexec cat\n")
    return w


def dom0_kw(host: QrexecHost) -> dict[str, object]:
    return {"socket_dir": str(host.socket_dir), "vchan_dir": str(host.vchan_dir),
            "own_domain": 0}


def vm_kw(world: World, name: str) -> dict[str, object]:
    dom = world.host.domains[name]
    return {"agent_socket": dom.agent_socket, "vchan_dir": str(world.host.vchan_dir),
            "own_domain": dom.domid}


@pytest.fixture
def dom0(world: World) -> Iterator[Dom0Client]:
    with Dom0Client(**dom0_kw(world.host)) as client:  # type: ignore[arg-type]
        yield client


@pytest.fixture
def vm(world: World) -> Iterator[DomainClient]:
    with DomainClient(**vm_kw(world, "work")) as client:  # type: ignore[arg-type]
        yield client


# -- dom0 -> VM ------------------------------------------------------------------------------
def test_dom0_output_and_status(dom0: Dom0Client) -> None:
    r = dom0.run("work", "root:echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\n")
    with pytest.raises(CallFailed) as info:
        r.check_returncode()
    assert info.value.returncode == 7


@pytest.mark.parametrize("status", [0, 7, 255])
def test_dom0_exit_statuses(dom0: Dom0Client, status: int) -> None:
    assert dom0.run("work", f"root:exit {status}").returncode == status


def test_dom0_signal_status(dom0: Dom0Client) -> None:
    assert dom0.run("work", "root:kill -9 $$").returncode == 128 + 9


def test_dom0_stdin(dom0: Dom0Client) -> None:
    r = dom0.run("work", "root:tr a-z A-Z", input=b"hello world\n")
    assert (r.returncode, r.stdout) == (0, b"HELLO WORLD\n")


def test_dom0_empty_stdin_is_an_eof(dom0: Dom0Client) -> None:
    # without input the remote stdin ends at once, as `qrexec-client </dev/null`
    assert dom0.run("work", "root:cat; echo end").stdout == b"end\n"


def test_dom0_daemon_not_running(dom0: Dom0Client) -> None:
    with pytest.raises(DaemonNotRunning) as info:
        dom0.run("nosuchvm", "root:true")
    assert info.value.returncode == 125


def test_dom0_missing_user_is_125(dom0: Dom0Client) -> None:
    assert dom0.run("work", "no-such-user-xyz:true").returncode == 125


def test_dom0_service_and_missing_service(dom0: Dom0Client) -> None:
    r = dom0.run_service("anotherVM", "test.Echo", "arg", input=b"abc\n")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"dom0 test.Echo+arg\nABC\n", b"err\n")
    assert dom0.run_service("anotherVM", "test.Missing").returncode == 127


def test_dom0_to_dom0_service(world: World) -> None:
    world.service("dom0", "test.Local", "#!/bin/sh\necho \"local $1\"\ncat\nexit 4\n")
    # the client follows the environment it is given (default: this process's, at creation)
    env = Environment(dict(os.environ, QREXEC_SERVICE_PATH=str(world.rpc_dir("dom0")),
                           QUBES_RPC_CONFIG_PATH=str(world.host.root / "dom0-rpc-config")))
    with Dom0Client(**dom0_kw(world.host), env=env) as dom0:  # type: ignore[arg-type]
        r = dom0.run_service("dom0", "test.Local", "xy", input=b"in\n")
        assert (r.returncode, r.stdout) == (4, b"local xy\nin\n")
        assert dom0.run_service("dom0", "test.Missing").returncode == 127
        r = dom0.run("dom0", "root:true")
        assert r.returncode == 125 and b"DEFAULT:" in r.stderr


def test_dom0_eof_each_way_while_streaming(dom0: Dom0Client) -> None:
    # the service closes its stdout first and goes on reading; then our stdin EOF ends it
    with dom0.start("work", "root:echo early; exec >&-; cat >/dev/null; echo late >&2") as c:
        assert c.stdout.read() == b"early\n"  # EOF from the service's side
        c.send(b"ignored\n")
        c.close_stdin()  # EOF to the service's side
        assert c.stderr.read() == b"late\n"
        assert c.wait(30) == 0


def test_dom0_abort_mid_stream_the_service_sees_eof(world: World,
                                                    dom0: Dom0Client) -> None:
    marker = world.host.root / "ended"
    call = dom0.start("work", f"root:echo started; cat >/dev/null; touch {marker}")
    assert call.stdout.readline() == b"started\n"
    call.abort()
    # the service's stdin ended with the channel, as when a CLI is killed
    wait_for(marker.exists, 20, "the service to see its stdin's EOF")


def test_dom0_run_timeout(dom0: Dom0Client) -> None:
    with pytest.raises(CallTimeout) as info:
        dom0.run("work", "root:echo started; exec sleep 60", timeout=2.0)
    assert info.value.stdout == b"started\n"


def test_dom0_cancel_mid_stream(world: World) -> None:
    marker = world.host.root / "cancelled"

    async def main() -> None:
        client = AsyncDom0Client(**dom0_kw(world.host))  # type: ignore[arg-type]
        got = asyncio.Event()

        async def stream() -> None:
            cmd = f"root:yes; cat >/dev/null; touch {marker}"
            async with await client.start("work", cmd) as call:
                await call.stdout.readexactly(1 << 16)
                got.set()
                await call.wait()

        task = asyncio.create_task(stream())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # `yes` dies of the closed stdout, `cat` of the ended stdin
    wait_for(marker.exists, 20, "the service to see the call's end")


def test_dom0_wait_after_abort_raises(dom0: Dom0Client) -> None:
    call = dom0.start("work", "root:exec sleep 60")
    call.abort()
    with pytest.raises(CallAborted):
        call.wait(5)


async def _stream_exact(call: object, total: int) -> tuple[str, str]:
    """Send `total` bytes of a pattern through `call` while reading its output; the
    digests of what was sent and received."""
    from pyqrexec.api import AsyncCall

    assert isinstance(call, AsyncCall)
    block = hashlib.sha256(b"seed").digest() * (MIB // 32)
    sent = hashlib.sha256()
    received = hashlib.sha256()
    count = 0

    async def feed() -> None:
        for i in range(total // MIB):
            piece = block[i % 32:] + block[: i % 32]
            sent.update(piece)
            await call.send(piece)
        await call.close_stdin()

    async def drain() -> None:
        nonlocal count
        while chunk := await call.stdout.read(MIB):
            received.update(chunk)
            count += len(chunk)

    await asyncio.gather(feed(), drain())
    assert await call.wait() == 0
    assert count == total
    return sent.hexdigest(), received.hexdigest()


def test_dom0_256_mib_each_way_exact(world: World) -> None:
    async def main() -> tuple[str, str]:
        client = AsyncDom0Client(**dom0_kw(world.host))  # type: ignore[arg-type]
        return await _stream_exact(await client.start("work", "root:exec cat"), 256 * MIB)

    sent, received = asyncio.run(main())
    assert sent == received


def test_dom0_blocking_run_64_mib_each_way_exact(dom0: Dom0Client) -> None:
    """`Dom0Client.run` without a loop (docs/client-library.md#the-blocking-clients): input
    fed while output is read, neither held up by the other."""
    data = hashlib.sha256(b"seed").digest() * (64 * MIB // 32)
    r = dom0.run("work", "root:exec cat", input=data)
    assert r.returncode == 0
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(data).digest()


def test_dom0_blocking_run_sends_what_the_cli_sends(host: QrexecHost) -> None:
    """The loop-less `run`, the asyncio path (taken while another call is in flight) and
    `qrexec-client` put the same messages on the data channel, and get the same result."""
    world, tap = tapped_world(host)
    command = "root:read x; echo \"$x\"; echo err >&2; exit 5"
    r = host.client("-d", "work", command, input=b"in\n")
    results = [(r.returncode, r.stdout, r.stderr)]
    with Dom0Client(**dom0_kw(host)) as dom0:  # type: ignore[arg-type]
        x = dom0.run("work", command, input=b"in\n")
        results.append((x.returncode, x.stdout, x.stderr))
        busy = dom0.start("work", "root:exec sleep 60")
        x = dom0.run("work", command, input=b"in\n")
        results.append((x.returncode, x.stdout, x.stderr))
        busy.abort()
    assert results == [(5, b"in\n", b"err\n")] * 3
    cli, blocking, _busy, looped = conns = tap.data_connections()
    wait_for(lambda: all(c.done.is_set() for c in conns), 10, "the channels to close")
    sent = [[(m.type, m.payload) for m in c.to_client.messages()] for c in (cli, blocking, looped)]
    assert sent[0] == sent[1] == sent[2]
    assert [t for t, _ in sent[0]] == [HELLO, STDIN, STDIN]


def test_dom0_many_calls_in_flight(world: World) -> None:
    # a service, not a `root:` command: the root agent runs commands in root's login shell,
    # whose start-up (~80 ms of a bash profile here) times 60 is not what this is about
    world.service("work", "test.ReadEcho", "#!/bin/sh\nread x; echo $x $1\n")

    async def main() -> None:
        client = AsyncDom0Client(**dom0_kw(world.host))  # type: ignore[arg-type]
        results = await asyncio.gather(*(
            client.run_service("work", "test.ReadEcho", str(i), input=b"in\n", timeout=120)
            for i in range(60)))
        assert [r.stdout for r in results] == [f"in {i}\n".encode() for i in range(60)]
        assert all(r.returncode == 0 for r in results)

    asyncio.run(main())


# -- VM -> VM ------------------------------------------------------------------------------
def test_vm_output_stdin_and_status(vm: DomainClient) -> None:
    r = vm.call("anotherVM", "test.Echo+arg", input=b"hello\n")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"work test.Echo+arg\nHELLO\n", b"err\n")


def test_vm_refused(vm: DomainClient) -> None:
    with pytest.raises(CallRefused) as info:
        vm.call("deny-me", "test.Echo")
    assert info.value.returncode == 126


def test_vm_service_not_found(vm: DomainClient) -> None:
    assert vm.call("anotherVM", "test.Missing").returncode == 127


def test_vm_to_dom0(world: World, vm: DomainClient) -> None:
    world.service("dom0", "test.Dom0", "#!/bin/sh\necho \"to $QREXEC_REQUESTED_TARGET\"\n"
                  "cat\nexit 5\n")
    r = vm.call("dom0", "test.Dom0", input=b"payload\n")
    assert (r.returncode, r.stdout) == (5, b"to dom0\npayload\n")


def test_vm_eof_each_way_while_streaming(world: World, vm: DomainClient) -> None:
    world.service("anotherVM", "test.Early",
                  "#!/bin/sh\necho early\nexec >&-\ncat >/dev/null\necho late >&2\n")
    with vm.start("anotherVM", "test.Early") as c:
        assert c.stdout.read() == b"early\n"
        c.send(b"ignored\n")
        c.close_stdin()
        assert c.stderr.read() == b"late\n"
        assert c.wait(30) == 0


def test_vm_wait_timeout_then_abort_the_service_sees_eof(world: World,
                                                         vm: DomainClient) -> None:
    marker = world.host.root / "vm-ended"
    world.service("anotherVM", "test.Hang",
                  f"#!/bin/sh\necho started\ncat >/dev/null\ntouch {marker}\nexec sleep 60\n")
    call = vm.start("anotherVM", "test.Hang")
    assert call.stdout.readline() == b"started\n"
    with pytest.raises(TimeoutError):
        call.wait(0.5)  # the stdin stays open: the call goes on
    call.abort()
    wait_for(marker.exists, 20, "the service to see its stdin's EOF")
    # the source's agent got our end (its trigger connection closed): calls go on
    assert vm.call("anotherVM", "test.Echo").returncode == 3


def test_vm_run_timeout(vm: DomainClient, world: World) -> None:
    world.service("anotherVM", "test.Sleep", "#!/bin/sh\necho started\nexec sleep 60\n")
    with pytest.raises(CallTimeout) as info:
        vm.call("anotherVM", "test.Sleep", timeout=3.0)
    assert info.value.stdout == b"started\n"


def test_vm_cancel_mid_stream(world: World) -> None:
    marker = world.host.root / "vm-cancelled"
    world.service("anotherVM", "test.Yes", f"#!/bin/sh\nyes\ncat >/dev/null\ntouch {marker}\n")

    async def main() -> None:
        client = AsyncDomainClient(**vm_kw(world, "work"))  # type: ignore[arg-type]
        call = await client.start("anotherVM", "test.Yes")
        await call.stdout.readexactly(1 << 16)
        reader = asyncio.create_task(call.wait())
        await asyncio.sleep(0)
        reader.cancel()
        call.abort()
        with pytest.raises(asyncio.CancelledError):
            await reader

    asyncio.run(main())
    wait_for(marker.exists, 20, "the service to see the call's end")


def test_vm_256_mib_each_way_exact(world: World) -> None:
    async def main() -> tuple[str, str]:
        client = AsyncDomainClient(**vm_kw(world, "work"))  # type: ignore[arg-type]
        return await _stream_exact(await client.start("anotherVM", "test.Cat"), 256 * MIB)

    sent, received = asyncio.run(main())
    assert sent == received


def test_vm_many_calls_in_flight_and_refusals(world: World) -> None:
    async def main() -> None:
        client = AsyncDomainClient(**vm_kw(world, "work"))  # type: ignore[arg-type]

        async def one(i: int) -> bytes:
            if i % 10 == 9:
                with pytest.raises(CallRefused):
                    await client.call("deny-me", "test.Cat")
                return b"refused"
            r = await client.call("anotherVM", "test.Cat", input=f"{i}\n".encode(),
                                  timeout=120)
            assert r.returncode == 0
            return r.stdout

        got = await asyncio.gather(*(one(i) for i in range(60)))
        assert got == [b"refused" if i % 10 == 9 else f"{i}\n".encode() for i in range(60)]

    asyncio.run(main())
    # and the agent still serves the CLI as before
    r = world.call("work", "anotherVM", "test.Cat", input=b"cli\n")
    assert (r.returncode, r.stdout) == (0, b"cli\n")


def test_vm_agent_not_there(world: World) -> None:
    from pyqrexec.api import SetupFailed

    with DomainClient(agent_socket=str(world.host.root / "nope.sock")) as client, \
            pytest.raises(SetupFailed) as info:
        client.call("anotherVM", "test.Echo")
    assert info.value.returncode == 1


def _fake_daemon(host: QrexecHost, name: str, answer: bytes) -> threading.Thread:
    """`qrexec.<name>` in the host's socket directory: a daemon that, for one connection,
    reads what the client sends (its HELLO and request come at once), then writes `answer`
    and closes."""
    path = host.socket_dir / f"qrexec.{name}"
    path.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            conn.settimeout(10)
            conn.recv(4096)
            conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("answer", "says"), [
    (b"", "cannot talk to the qrexec daemon of fake"),
    (struct.pack("<III", 0x300, 4, 2), "cannot talk to the qrexec daemon of fake"),
    (struct.pack("<III", 0x300, 4, 3), "request to the qrexec daemon of fake failed"),
])
def test_dom0_daemon_that_fails_the_request(host: QrexecHost, answer: bytes, says: str) -> None:
    """A daemon that closes at once, answers with a HELLO below 3, or closes after its HELLO
    without the port: the library (loop-less and asyncio) and `qrexec-client` fail the same
    way, 125, saying where it failed (each sends its request before it reads the daemon's
    HELLO: this daemon answers only once it has read the request)."""
    from pyqrexec.api import SetupFailed

    thread = _fake_daemon(host, "fake", answer)
    with Dom0Client(**dom0_kw(host)) as dom0, pytest.raises(SetupFailed) as info:  # type: ignore[arg-type]
        dom0.run("fake", "root:true", timeout=10)
    thread.join(10)
    assert info.value.returncode == 125 and says in str(info.value)
    thread = _fake_daemon(host, "fake", answer)
    with pytest.raises(SetupFailed) as info:
        asyncio.run(AsyncDom0Client(**dom0_kw(host)).run(  # type: ignore[arg-type]
            "fake", "root:true", timeout=10))
    thread.join(10)
    assert info.value.returncode == 125 and says in str(info.value)
    thread = _fake_daemon(host, "fake", answer)
    r = host.client("-d", "fake", "root:true", timeout=20)
    thread.join(10)
    assert r.returncode == 125 and says.encode() in r.stderr
