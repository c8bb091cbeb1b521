from __future__ import annotations

import pytest

from pyqrexec.services.tcptarget import TcpTarget, TcpTargetError, is_tcp_link, tcp_target


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        (b"/dev/tcp", True),
        (b"/dev/tcp/1.2.3.4/80", True),
        (b"/dev/tcp/", True),
        (b"/dev/tcpx", False),
        (b"/dev/udp/1.2.3.4/80", False),
        (b"dev/tcp", False),
    ],
)
def test_is_tcp_link(link: bytes, expected: bool) -> None:
    assert is_tcp_link(link) is expected


@pytest.mark.parametrize(
    ("link", "argument", "expected"),
    [
        (b"/dev/tcp/127.0.0.1/8082", None, TcpTarget("127.0.0.1", 8082, False)),
        (b"/dev/tcp/127.0.0.1/8082", b"", TcpTarget("127.0.0.1", 8082, False)),
        (b"/dev/tcp/127.0.0.1", b"8082", TcpTarget("127.0.0.1", 8082, False)),
        (b"/dev/tcp/::1", b"8080", TcpTarget("::1", 8080, True)),
        (b"/dev/tcp", b"127.0.0.1+80", TcpTarget("127.0.0.1", 80, False)),
        (b"/dev/tcp", b"++1+80", TcpTarget("::1", 80, True)),
        (b"/dev/tcp", b"fe80++1%lo+65535", TcpTarget("fe80::1%lo", 65535, True)),
    ],
)
def test_targets(link: bytes, argument: bytes | None, expected: TcpTarget) -> None:
    assert tcp_target(link, argument) == expected


@pytest.mark.parametrize(
    ("link", "argument"),
    [
        (b"/dev/tcp/", b"80"),
        (b"/dev/tcp/127.0.0.1/8082", b"1"),
        (b"/dev/tcp/127.0.0.1", None),
        (b"/dev/tcp/127.0.0.1", b""),
        (b"/dev/tcp/127.0.0.1", b"08082"),
        (b"/dev/tcp/127.0.0.1", b"0"),
        (b"/dev/tcp/127.0.0.1", b"65536"),
        (b"/dev/tcp/127.0.0.1", b"+80"),
        (b"/dev/tcp/127.0.0.1", b"123456"),
        (b"/dev/tcp/127.0.0.1/80/x", None),
        (b"/dev/tcp", None),
        (b"/dev/tcp", b"80"),
        (b"/dev/tcp", b"1.2.3.4+080"),
        (b"/dev/tcp", b"a_b+80"),
        (b"/dev/tcp", b"+80"),
        (b"/dev/tcp", b"1.2.3.4+"),
    ],
)
def test_rejected(link: bytes, argument: bytes | None) -> None:
    with pytest.raises(TcpTargetError):
        tcp_target(link, argument)
