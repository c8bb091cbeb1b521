"""Where a `/dev/tcp` service symlink points (docs/reference/services.md#tcp-services). Pure."""

from __future__ import annotations

import re

from ..protocol.records import record

__all__ = ["TcpTarget", "TcpTargetError", "DEV_TCP", "is_tcp_link", "tcp_target"]

DEV_TCP = b"/dev/tcp"
_PORT = re.compile(rb"[1-9][0-9]{0,4}")


@record
class TcpTarget:
    #: numeric address text (checked when connecting: no name resolution)
    host: str
    port: int
    #: the address must be IPv6 (it contains `:` or `%`)
    ipv6_only: bool


class TcpTargetError(Exception):
    """A bad link or argument; the call fails with 125."""


def is_tcp_link(link_text: bytes) -> bool:
    """Whether a service symlink's target text makes it a TCP service."""
    return link_text == DEV_TCP or link_text.startswith(DEV_TCP + b"/")


def _port(text: bytes) -> int:
    if _PORT.fullmatch(text) is None or int(text) > 65535:
        raise TcpTargetError(f"Invalid port {text!r}")
    return int(text)


def _host(text: bytes) -> TcpTarget:
    try:
        host = text.decode("ascii")
    except UnicodeDecodeError as err:
        raise TcpTargetError(f"Invalid host {text!r}") from err
    if not host:
        raise TcpTargetError("Empty host")
    return TcpTarget(host, 0, ":" in host or "%" in host)


def tcp_target(link_text: bytes, argument: bytes | None) -> TcpTarget:
    """Host and port for a call with `argument` (None: no `+`) to a `/dev/tcp…` link."""
    arg = argument or b""
    if link_text == DEV_TCP:
        host_part, plus, port_part = arg.rpartition(b"+")
        if not plus:
            raise TcpTargetError("Argument must have the form HOST+PORT")
        if b"_" in host_part:
            raise TcpTargetError("Invalid host (contains '_')")
        host_text, port_text = host_part.replace(b"+", b":"), port_part
    else:
        rest = link_text[len(DEV_TCP) + 1 :]
        if not rest:
            raise TcpTargetError("Symlink to /dev/tcp/ without a host")
        host_text, slash, link_port = rest.partition(b"/")
        if slash:
            if arg:
                raise TcpTargetError("Unexpected argument")
            port_text = link_port
        else:
            if not arg:
                raise TcpTargetError("Missing port argument")
            port_text = arg
    port = _port(port_text)
    host = _host(host_text)
    return TcpTarget(host.host, port, host.ipv6_only)
