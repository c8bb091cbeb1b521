"""The receiving host's check of what a relay's ssh key asks for (docs/remote.md).

sshd runs the key's forced command whatever the client asked; the client's words arrive in
`SSH_ORIGINAL_COMMAND`, written by the other host's relay and so hostile. They are read here,
never by a shell: exactly `SOURCE TARGET SERVICE[+ARG]`, single spaces, printable ASCII, each
word of the form qrexec itself accepts, and SOURCE one of the RemoteVMs this key is pinned
to. Pure: text in, a `Request` or a `Refused` with the reason out.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from ..host.config import validate_name

__all__ = ["Request", "Refused", "parse_original_command", "MAX_COMMAND"]

#: a TRIGGER_SERVICE4's fields are at most 63 + 63 + 65535 bytes
MAX_COMMAND = 63 + 1 + 63 + 1 + 65535
#: a service name and its argument as qrexec passes them on (letters, digits, `_.-+`)
_SERVICE_RE = re.compile(r"[A-Za-z0-9_.-]+(\+[A-Za-z0-9_.+-]*)?")


@dataclass(frozen=True)
class Request:
    source: str
    target: str
    service: str


class Refused(Exception):
    """Why the call is refused; the forced command prints it and exits 126."""


def parse_original_command(text: str | None, pins: Collection[str]) -> Request:
    if text is None:
        raise Refused("no command: this key carries qrexec calls only")
    if len(text) > MAX_COMMAND or not text.isascii() or not text.isprintable():
        raise Refused("malformed request (not one line of printable ASCII)")
    words = text.split(" ")
    if len(words) != 3:
        raise Refused("malformed request (not SOURCE TARGET SERVICE)")
    source, target, service = words
    for word, what in ((source, "source"), (target, "target")):
        why = validate_name(word)
        if why is not None or word == "dom0":
            raise Refused(f"invalid {what} {word!r}")
    if not _SERVICE_RE.fullmatch(service):
        raise Refused(f"invalid service {service!r}")
    if source not in pins:
        raise Refused(f"this key may not speak for {source!r}")
    return Request(source, target, service)
