"""The policy Admin API's pure part: request checks, tokens, validation, listings
(docs/reference/cli.md#qubes-policy-admin)."""

from __future__ import annotations

import hashlib

import pytest

from pyqrexec.policy.admin import (
    METHODS,
    Op,
    PolicyAdminException,
    PolicyAdminInvalidFileNameException,
    PolicyAdminProtocolException,
    PolicyAdminSyntaxException,
    PolicyAdminTokenException,
    check_file_name,
    check_service,
    check_token,
    compute_token,
    files_for_service,
    listing,
    parse_request,
    split_replace_payload,
    validate_change,
)
from pyqrexec.policy.errors import PolicyLoadError
from pyqrexec.policy.loaders import MemoryFiles, OverlayFiles, load_policy

from .policy_helpers import LEGACY, USER

ETC = "/etc/qubes/policy.d"


def refused(exc: type[PolicyAdminException], call, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyAdminException) as info:
        call(*args)
    assert type(info.value) is exc
    return info.value.wire()


def test_nine_methods() -> None:
    assert sorted(METHODS) == sorted(
        [f"policy.{m}" for m in ("List", "Get", "Replace", "Remove", "GetFiles")]
        + [f"policy.include.{m}" for m in ("List", "Get", "Replace", "Remove")]
    )
    m = METHODS["policy.include.Replace"]
    assert (m.op, m.include, m.takes_arg, m.takes_payload) == (Op.REPLACE, True, True, True)
    m = METHODS["policy.List"]
    assert (m.takes_arg, m.takes_payload) == (False, False)


def test_request_checks_in_order() -> None:
    p = PolicyAdminProtocolException
    # argument characters come first, even before the method name
    assert refused(p, parse_request, "policy.Nope+a/b", b"x") == (
        'PolicyAdminProtocolException Invalid argument: "a/b"\n'
        "Valid characters are letters, numbers, dot, plus, hyphen and underline"
    )
    assert refused(p, parse_request, "policy.Nope+ab", b"x").endswith(
        "unrecognized method: policy.Nope"
    )
    assert refused(p, parse_request, "policy.List+x", b"x").endswith(" Unexpected argument")
    assert refused(p, parse_request, "policy.Get+x", b"x").endswith(" Unexpected payload")
    request = parse_request("policy.Replace+30-user", b"any\n")
    assert (request.method.op, request.argument, request.payload) == (
        Op.REPLACE,
        "30-user",
        b"any\n",
    )
    # a method needing an argument gets an empty one; the file name check refuses it later
    assert parse_request("policy.Get", b"").argument == ""


def test_file_names() -> None:
    check_file_name("30-user_X")
    for bad in ("", "..", "a.b", "a+b", "a b"):
        message = refused(PolicyAdminInvalidFileNameException, check_file_name, bad)
        assert message == (
            f"PolicyAdminInvalidFileNameException Invalid policy file name: {bad}\n"
            "Names must contain only alphanumeric characters, underscore and hyphen."
        )


def test_get_files_service_check() -> None:
    p = PolicyAdminProtocolException
    assert refused(p, check_service, "").endswith(" Service cannot be empty.")
    assert refused(p, check_service, "a+b").endswith(
        " Service 'a+b' contains invalid characters: ('+',)"
    )
    check_service("qubes.Gpg")


def test_tokens() -> None:
    data = b"test.Svc * work vault allow\n"
    token = compute_token(data)
    assert token == b"sha256:" + hashlib.sha256(data).hexdigest().encode()
    check_token(b"any", None)
    check_token(b"any", data)
    check_token(b"new", None)
    check_token(token, data)
    t = PolicyAdminTokenException
    assert refused(t, check_token, b"new", data).endswith(" File exists but token is 'new'")
    assert refused(t, check_token, token, None).endswith(
        " File doesn't exist, but token isn't 'new'"
    )
    assert refused(t, check_token, token, b"other") == "PolicyAdminTokenException Token mismatch"
    assert refused(PolicyAdminProtocolException, check_token, b"md5:x", data).endswith(
        " Unrecognized token"
    )
    assert split_replace_payload(b"any\na\nb") == (b"any", b"a\nb")
    assert refused(PolicyAdminProtocolException, split_replace_payload, b"any").endswith(
        " Payload needs to include first line with token"
    )


def test_overlay_replaces_adds_and_removes() -> None:
    base = MemoryFiles({f"{ETC}/a.policy": "a", f"{ETC}/b.policy": "b"})
    overlay = OverlayFiles(base, {f"{ETC}/a.policy": None, f"{ETC}/c.policy": b"c"})
    assert sorted(overlay.list_dir(ETC)) == ["b.policy", "c.policy"]
    assert not overlay.is_file(f"{ETC}/a.policy") and overlay.is_file(f"{ETC}/c.policy")
    assert overlay.read_bytes(f"{ETC}/c.policy") == b"c"
    assert overlay.read_bytes(f"{ETC}/b.policy") == b"b"
    with pytest.raises(FileNotFoundError):
        overlay.read_bytes(f"{ETC}/a.policy")
    assert overlay.removed == {f"{ETC}/a.policy"}


def validate(files: dict[str, str], path: str, content: bytes | None) -> None:
    validate_change(MemoryFiles(files, [ETC]), ETC, LEGACY, path, content)


def test_validation_reads_the_new_content() -> None:
    files = {USER: "test.Svc * work vault allow\n"}
    validate(files, USER, b"test.Svc * work vault deny\n")
    validate(files, f"{ETC}/40-new.policy", b"test.Svc * work vault deny\n")
    message = refused(PolicyAdminSyntaxException, validate, files, USER, b"test.Svc * work")
    assert message == (
        "PolicyAdminSyntaxException Policy change validation failed: "
        f"{USER}:1: wrong number of fields"
    )
    message = refused(PolicyAdminSyntaxException, validate, files, USER, b"\xff\n")
    assert message.endswith(f"{USER}:1: invalid UTF-8 text")


def test_validation_of_removals_and_includes() -> None:
    files = {USER: "!include include/x\n", f"{ETC}/include/x": "x * a b deny\n"}
    message = refused(PolicyAdminSyntaxException, validate, files, f"{ETC}/include/x", None)
    assert message.endswith(
        f"{USER}:1: including a file that will be removed: {ETC}/include/x"
    )
    validate(files, USER, None)  # removing the includer is fine
    # an include file is checked through its includers only
    message = refused(
        PolicyAdminSyntaxException, validate, files, f"{ETC}/include/x", b"x * a\n"
    )
    assert message.endswith(f"{ETC}/include/x:1: wrong number of fields")
    validate({USER: ""}, f"{ETC}/include/y", b"not policy at all\n")


def test_validation_leaves_load_errors_to_the_caller() -> None:
    with pytest.raises(PolicyLoadError):
        validate({USER: ""}, f"{ETC}/40-Upper.policy", b"")


def test_listing() -> None:
    names = ["b.policy", "a.policy", "README", ".policy", "c.policy.swp"]
    assert listing(names, ".policy") == b"a\nb\n"
    assert listing(["y", "x"], "") == b"x\ny\n"
    assert listing([], "") == b""


def test_files_for_service() -> None:
    files = {
        f"{ETC}/10-a.policy": "other.Svc * a b deny\n",
        f"{ETC}/20-b.policy": "test.Svc * a b deny\n!include include/admin-x\n",
        f"{ETC}/include/admin-x": "* * a b deny\ntest.Svc * c d deny\n",
        f"{ETC}/30-c.policy": "test.Svc +x a b deny\n!compat-4.0\n",
        f"{LEGACY}/test.Svc": "a b allow\n",
    }
    rules = load_policy(MemoryFiles(files), [ETC], LEGACY).policy.rules
    out = files_for_service(rules, "test.Svc", [ETC])
    assert out == f"20-b\nadmin-x\n30-c\n{LEGACY}/test.Svc\n".encode()
    assert files_for_service(rules, "none.Such", [ETC]) == b"admin-x\n"
