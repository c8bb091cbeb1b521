"""Command strings (docs/reference/protocol.md#command-strings)."""

from __future__ import annotations

import pytest

from pyqrexec.protocol.cmdline import (
    Command,
    ServiceCall,
    check_fork_cmdline,
    parse_command,
    replace_default_user,
    split_user,
    strip_nul,
)
from pyqrexec.protocol.errors import RemoteProtocolError

from .verdict import verdict


@pytest.mark.parametrize(
    ("cmdline", "user", "command"),
    [
        (b"user:id", b"user", b"id"),
        (b"DEFAULT:QUBESRPC a b", b"DEFAULT", b"QUBESRPC a b"),
        (b"a:b:c", b"a", b"b:c"),
        (b":cmd", b"", b"cmd"),
        (b"root:", b"root", b""),
    ],
)
def test_split_user(cmdline: bytes, user: bytes, command: bytes) -> None:
    assert split_user(cmdline) == (user, command)


@pytest.mark.parametrize("cmdline", [b"", b"QUBESRPC a b", b"nocolon"])
def test_split_user_needs_colon(cmdline: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        split_user(cmdline)


@pytest.mark.parametrize(
    ("raw", "text"), [(b"ab\0", b"ab"), (b"ab", b"ab"), (b"a\0b\0", b"a"), (b"", b"")]
)
def test_strip_nul(raw: bytes, text: bytes) -> None:
    assert strip_nul(raw) == text


@pytest.mark.parametrize(
    ("command", "nogui", "text"),
    [
        (b"ls -l", False, b"ls -l"),
        (b"", False, b""),
        (b"nogui:ls", True, b"ls"),
        (b"nogui:", True, b""),
        (b"nogui:nogui:ls", True, b"nogui:ls"),
        (b"NOGUI:ls", False, b"NOGUI:ls"),
        (b" QUBESRPC a b", False, b" QUBESRPC a b"),
        (b"qubesrpc a b", False, b"qubesrpc a b"),
    ],
)
def test_shell_commands(command: bytes, nogui: bool, text: bytes) -> None:
    assert parse_command(command) == Command(nogui, None, text)


def call(descriptor: bytes, service: bytes, argument: bytes | None, source: bytes,
         *rest: bytes) -> ServiceCall:
    return ServiceCall(descriptor, service, argument, source, rest)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (b"QUBESRPC test.Svc src", call(b"test.Svc", b"test.Svc", None, b"src")),
        (b"QUBESRPC test.Svc+ src", call(b"test.Svc+", b"test.Svc", b"", b"src")),
        (b"QUBESRPC test.Svc+arg src", call(b"test.Svc+arg", b"test.Svc", b"arg", b"src")),
        (b"QUBESRPC a+b+c src", call(b"a+b+c", b"a", b"b+c", b"src")),
        (b"QUBESRPC svc+ src name dom0",
         call(b"svc+", b"svc", b"", b"src", b"name", b"dom0")),
        (b"QUBESRPC svc+ src keyword adminvm",
         call(b"svc+", b"svc", b"", b"src", b"keyword", b"adminvm")),
        (b"QUBESRPC svc src extra", call(b"svc", b"svc", None, b"src", b"extra")),
        (b"QUBESRPC svc @adminvm", call(b"svc", b"svc", None, b"@adminvm")),
    ],
)
def test_service_commands(command: bytes, expected: ServiceCall) -> None:
    for prefix, nogui in ((b"", False), (b"nogui:", True)):
        assert parse_command(prefix + command) == Command(nogui, expected, command)


@pytest.mark.parametrize(
    ("descriptor", "lookup"),
    [(b"svc", b"svc+"), (b"svc+", b"svc+"), (b"svc+arg", b"svc+arg")],
)
def test_lookup_descriptor(descriptor: bytes, lookup: bytes) -> None:
    cmd = parse_command(b"QUBESRPC " + descriptor + b" src")
    assert cmd.service is not None
    assert cmd.service.lookup_descriptor == lookup


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(b"QUBESRPC", id="nothing-after"),
        pytest.param(b"QUBESRPCsvc src", id="no-space-after-QUBESRPC"),
        pytest.param(b"QUBESRPC\tsvc src", id="tab-after-QUBESRPC"),
        pytest.param(b"QUBESRPC svc", id="no-space-after-descriptor"),
        pytest.param(b"QUBESRPC  src", id="empty-descriptor"),
        pytest.param(b"QUBESRPC svc ", id="empty-source"),
        pytest.param(b"QUBESRPC svc  name dom0", id="empty-source-then-tokens"),
        pytest.param(b"QUBESRPC +arg src", id="empty-service"),
        pytest.param(b"QUBESRPC + src", id="plus-only"),
        pytest.param(b"QUBESRPC " + b"s" * 256 + b" src", id="service-256"),
        pytest.param(b"QUBESRPC " + b"s" * 256 + b"+a src", id="service-256-with-arg"),
        pytest.param(b"QUBESRPC s+" + b"a" * 64999 + b" src", id="descriptor-65001"),
        pytest.param(b"nogui:QUBESRPC svc", id="nogui-no-source"),
    ],
)
def test_service_command_failures(command: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_command(command)


@pytest.mark.parametrize(
    ("descriptor", "service_len"),
    [
        pytest.param(b"s", 1, id="service-1"),
        pytest.param(b"s" * 255, 255, id="service-255"),
        pytest.param(b"s" * 255 + b"+a", 255, id="service-255-with-arg"),
        pytest.param(b"s+" + b"a" * 64998, 1, id="descriptor-65000"),
    ],
)
def test_length_boundaries_accepted(descriptor: bytes, service_len: int) -> None:
    cmd = parse_command(b"QUBESRPC " + descriptor + b" src")
    assert cmd.service is not None
    assert cmd.service.descriptor == descriptor
    assert len(cmd.service.service) == service_len


def test_agent_pipeline() -> None:
    """What the agent does with a forwarded EXEC_CMDLINE payload."""
    user, command = split_user(strip_nul(b"DEFAULT:nogui:QUBESRPC test.Svc+arg src\0"))
    assert user == b"DEFAULT"
    assert parse_command(command) == Command(
        True, call(b"test.Svc+arg", b"test.Svc", b"arg", b"src"), b"QUBESRPC test.Svc+arg src"
    )


@pytest.mark.parametrize(
    ("cmdline", "text"),
    [(b"QUBESRPC a b\0", b"QUBESRPC a b"), (b"\0", b""), (b"x\0", b"x"),
     (b"", None), (b"ls", None), (b"a\0b\0", None), (b"\0\0", None)],
)
def test_fork_cmdline(cmdline: bytes, text: bytes | None) -> None:
    assert verdict(text is not None, lambda: check_fork_cmdline(cmdline)) == text


@pytest.mark.parametrize(
    ("cmdline", "out"),
    [
        (b"DEFAULT:QUBESRPC a b\0", b"user:QUBESRPC a b\0"),
        (b"DEFAULT:\0", b"user:\0"),
        (b"DEFAULT\0", b"DEFAULT\0"),
        (b"default:ls\0", b"default:ls\0"),
        (b"root:DEFAULT:ls\0", b"root:DEFAULT:ls\0"),
        (b" DEFAULT:ls\0", b" DEFAULT:ls\0"),
    ],
)
def test_replace_default_user(cmdline: bytes, out: bytes) -> None:
    assert replace_default_user(cmdline, b"user") == out
