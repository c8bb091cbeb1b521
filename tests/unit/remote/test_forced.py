"""The receiving side's reading of SSH_ORIGINAL_COMMAND: hostile text, pinned sources."""

from __future__ import annotations

import pytest

from pyqrexec.remote.forced import Refused, Request, parse_original_command

PINS = ("work", "mail")


def test_pinned_source_accepted() -> None:
    assert parse_original_command("work vault test.Echo+a.b", PINS) == Request(
        "work", "vault", "test.Echo+a.b")
    assert parse_original_command("mail vault test.Echo+", PINS).source == "mail"


@pytest.mark.parametrize(("text", "words"), [
    (None, "no command"),
    ("", "not SOURCE TARGET SERVICE"),
    ("vault test.Echo", "not SOURCE TARGET SERVICE"),
    ("work  vault test.Echo", "not SOURCE TARGET SERVICE"),
    ("work vault test.Echo extra", "not SOURCE TARGET SERVICE"),
    ("other vault test.Echo", "may not speak for 'other'"),
    ("dom0 vault test.Echo", "invalid source 'dom0'"),
    ("@adminvm vault test.Echo", "invalid source"),
    ("uuid:11111111-1111-1111-1111-111111111111 vault test.Echo", "invalid source"),
    ("nosuch vault test.Echo", "may not speak for 'nosuch'"),
    ("wo/rk vault test.Echo", "invalid source"),
    ("wo+rk vault test.Echo", "invalid source"),
    ("work vault/x test.Echo", "invalid target"),
    ("work @default test.Echo", "invalid target"),
    ("work dom0 test.Echo", "invalid target"),
    ("work vault test.Echo;reboot", "invalid service"),
    ("work vault +arg", "invalid service"),
    ("work vault test/../Echo", "invalid service"),
    ("work vault test.Echo\nx", "printable ASCII"),
    ("work vault test.Echo\0junk", "printable ASCII"),
    ("wörk vault test.Echo", "printable ASCII"),
    ("work vault test.\x1b[2JEcho", "printable ASCII"),
    ("work vault test.Echo+" + "a" * 70000, "printable ASCII"),
])
def test_refused(text: str | None, words: str) -> None:
    with pytest.raises(Refused) as info:
        parse_original_command(text, PINS)
    assert words in str(info.value)
