from __future__ import annotations

import pytest

from pyqrexec.services.rpcconfig import (
    DEFAULT_CONFIG,
    RpcConfigError,
    ServiceConfig,
    parse_rpc_config,
)


def config(text: bytes) -> ServiceConfig:
    return parse_rpc_config(text).config


def rejected(text: bytes) -> str:
    with pytest.raises(RpcConfigError) as info:
        parse_rpc_config(text, "f")
    return str(info.value)


def test_empty_file_gives_defaults() -> None:
    assert parse_rpc_config(b"").config == DEFAULT_CONFIG
    assert parse_rpc_config(b"").warnings == ()


def test_all_keys() -> None:
    text = (
        b"wait-for-session = true\n"
        b"skip-service-descriptor=true\n"
        b"exit-on-client-eof =\ttrue # why\n"
        b"exit-on-service-eof\t= false\n"
    )
    assert config(text) == ServiceConfig(True, None, True, True, False)


@pytest.mark.parametrize(("value", "expected"), [(b"0", False), (b"1", True), (b"false", False)])
def test_wait_for_session_integer_or_boolean(value: bytes, expected: bool) -> None:
    assert config(b"wait-for-session = " + value + b"\n").wait_for_session is expected


def test_force_user_string() -> None:
    assert config(b"force-user = 'alice'\n").force_user == "alice"
    assert config(b"force-user = ''\n").force_user == ""


def test_comments_blank_lines_crlf_and_trailing_blanks() -> None:
    text = b"# comment\r\n\n#\nwait-for-session = 1 \t\r\n"
    assert config(text).wait_for_session is True


def test_missing_final_newline_is_only_a_warning() -> None:
    parsed = parse_rpc_config(b"wait-for-session = true", "f")
    assert parsed.config.wait_for_session is True
    assert parsed.warnings == ("f:1: missing newline at EOF",)


def test_final_cr_without_newline_stays_and_is_junk() -> None:
    assert "junk" in rejected(b"wait-for-session = true\r")


def test_unknown_key_is_logged_and_ignored() -> None:
    parsed = parse_rpc_config(b"future-key = 'x'\n", "f")
    assert parsed.config == DEFAULT_CONFIG
    assert parsed.warnings == ("f:1: Unsupported key future-key",)


def test_comment_after_value() -> None:
    assert config(b"force-user = 'a#b' # comment\n").force_user == "a#b"
    assert config(b"wait-for-session = true#x\n").wait_for_session is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"wait-for-session = true\0\n", "NUL"),
        (b"# comment\0\n", "NUL"),
        (b" wait-for-session = true\n", "Unexpected whitespace at start of line"),
        (b"\twait-for-session = true\n", "Unexpected whitespace at start of line"),
        (b"  \n", "Unexpected whitespace at start of line"),
        (b"\t\n", "Unexpected whitespace at start of line"),
        (b"[section]\n", "section headers"),
        (b"1key = 1\n", "start of key"),
        (b"-key = 1\n", "start of key"),
        (b"wait-for-session\n", "Missing '='"),
        (b"wait-for-session true\n", "Missing '='"),
        (b"wait$ = 1\n", "Missing '='"),
        (b"wait-for-session =\n", "Empty value"),
        (b"wait-for-session = \n", "Empty value"),
        (b"wait-for-session = 01\n", "junk after integer"),
        (b"wait-for-session = 00\n", "junk after integer"),
        (b"other = 18446744073709551616\n", "out of range"),
        (b"wait-for-session = 2\n", "boolean"),
        (b"wait-for-session = 'a'\n", "boolean"),
        (b'wait-for-session = "a"\n', "Double-quoted"),
        (b"force-user = '''a'''\n", "Triple-quoted"),
        (b"force-user = 'a\n", "Unterminated"),
        (b"force-user = 'a'b'\n", "junk after value"),
        (b"force-user = 'a' x\n", "junk after value"),
        (b"wait-for-session = truex\n", "junk after value"),
        (b"wait-for-session = True\n", "Unsupported start of value"),
        (b"wait-for-session = yes\n", "Unsupported start of value"),
        (b"wait-for-session = -1\n", "Unsupported start of value"),
        (b"wait-for-session = 1.5\n", "junk after integer"),
        (b"force-user = 1\n", "string is expected"),
        (b"force-user = true\n", "string is expected"),
        (b"skip-service-descriptor = 1\n", "boolean"),
        (b"exit-on-client-eof = 'true'\n", "boolean"),
        (b"exit-on-service-eof = 0\n", "boolean"),
        (b"wait-for-session = true\nwait-for-session = true\n", "more than once"),
        (b"other = 1\nother = 2\n", "more than once"),
        (b"unknown = bogus\n", "Unsupported start of value"),
        (b"unknown = 'x\n", "Unterminated"),
    ],
)
def test_rejections(text: bytes, message: str) -> None:
    assert message in rejected(text)


def test_rejection_names_file_and_line() -> None:
    assert rejected(b"# ok\nwait-for-session = 01\n").startswith("f:2: ")


@pytest.mark.parametrize(
    "socket_key", [b"skip-service-descriptor", b"exit-on-client-eof", b"exit-on-service-eof"]
)
def test_force_user_conflicts_with_socket_keys(socket_key: bytes) -> None:
    assert "cannot be combined" in rejected(b"force-user = 'a'\n" + socket_key + b" = true\n")


def test_force_user_with_false_socket_keys_is_fine() -> None:
    text = b"force-user = 'a'\nskip-service-descriptor = false\n"
    assert config(text).force_user == "a"


def test_largest_integer_accepted_for_unknown_key() -> None:
    assert config(b"other = 18446744073709551615\n") == DEFAULT_CONFIG


def test_fork_server_allowed() -> None:
    assert DEFAULT_CONFIG.fork_server_allowed
    assert not config(b"exit-on-service-eof = true\n").fork_server_allowed
    assert config(b"wait-for-session = true\nforce-user = 'x'\n").fork_server_allowed
