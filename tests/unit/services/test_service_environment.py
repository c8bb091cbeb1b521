from __future__ import annotations

from collections.abc import Callable

import pytest

from pyqrexec.protocol.cmdline import ServiceCall
from pyqrexec.services.environment import (
    call_variables,
    inherited_environment,
    log_tag,
    login_wrapper_argv,
    service_argv,
    service_environment,
    valid_token_count,
)

Call = Callable[[bytes], ServiceCall]


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (b"QUBESRPC svc src", True),
        (b"QUBESRPC svc src name dom0", True),
        (b"QUBESRPC svc src  name   dom0", True),
        (b"QUBESRPC svc src ", True),
        (b"QUBESRPC svc src name", False),
        (b"QUBESRPC svc src a b c", False),
    ],
)
def test_token_count(call: Call, text: bytes, ok: bool) -> None:
    assert valid_token_count(call(text)) is ok


def test_argv(call: Call) -> None:
    assert service_argv(b"/p/s", call(b"QUBESRPC s+a src")) == [b"/p/s", b"a"]
    assert service_argv(b"/p/s", call(b"QUBESRPC s+ src")) == [b"/p/s"]
    assert service_argv(b"/p/s", call(b"QUBESRPC s src")) == [b"/p/s"]
    assert service_argv(b"/p/s", call(b"QUBESRPC s+-rf src")) == [b"/p/s", b"-rf"]


def test_vm_call_variables(call: Call) -> None:
    assert dict(call_variables(call(b"QUBESRPC s+a src"))) == {
        b"QREXEC_SERVICE_FULL_NAME": b"s+a",
        b"QREXEC_REMOTE_DOMAIN": b"src",
        b"QREXEC_SERVICE_ARGUMENT": b"a",
        b"QREXEC_REQUESTED_TARGET_TYPE": b"",
    }


def test_no_plus_means_no_argument_variable(call: Call) -> None:
    variables = dict(call_variables(call(b"QUBESRPC s src")))
    assert variables[b"QREXEC_SERVICE_FULL_NAME"] == b"s"
    assert b"QREXEC_SERVICE_ARGUMENT" not in variables
    assert dict(call_variables(call(b"QUBESRPC s+ src")))[b"QREXEC_SERVICE_ARGUMENT"] == b""


def test_dom0_name_and_keyword(call: Call) -> None:
    named = dict(call_variables(call(b"QUBESRPC s+ src name dom0")))
    assert named[b"QREXEC_REQUESTED_TARGET_TYPE"] == b"name"
    assert named[b"QREXEC_REQUESTED_TARGET"] == b"dom0"
    assert b"QREXEC_REQUESTED_TARGET_KEYWORD" not in named
    keyword = dict(call_variables(call(b"QUBESRPC s+ src keyword adminvm")))
    assert keyword[b"QREXEC_REQUESTED_TARGET_TYPE"] == b"keyword"
    assert keyword[b"QREXEC_REQUESTED_TARGET_KEYWORD"] == b"adminvm"
    assert b"QREXEC_REQUESTED_TARGET" not in keyword


def test_inherited_qrexec_variables_are_stripped(call: Call) -> None:
    base = {
        b"PATH": b"/bin",
        b"QREXECFOO": b"1",
        b"QREXEC_SERVICE_ARGUMENT": b"%bad",
        b"QREXEC_REQUESTED_TARGET": b"%bad",
        b"QREXEC_SERVICE_PATH": b"/x",
        b"QREXEC_AGENT_PID": b"1",
    }
    assert inherited_environment(base) == {
        b"PATH": b"/bin",
        b"QREXEC_SERVICE_PATH": b"/x",
        b"QREXEC_AGENT_PID": b"1",
    }
    env = service_environment(base, call(b"QUBESRPC test.Env dom0"), 42)
    assert env == {
        b"PATH": b"/bin",
        b"QREXEC_SERVICE_PATH": b"/x",
        b"QREXEC_AGENT_PID": b"42",
        b"QREXEC_SERVICE_FULL_NAME": b"test.Env",
        b"QREXEC_REMOTE_DOMAIN": b"dom0",
        b"QREXEC_REQUESTED_TARGET_TYPE": b"",
    }


def test_extra_variables_and_call_variables_win(call: Call) -> None:
    env = service_environment(
        {b"HOME": b"/root"}, call(b"QUBESRPC s src"), None, {b"HOME": b"/home/u"}
    )
    assert env[b"HOME"] == b"/home/u"
    assert b"QREXEC_AGENT_PID" not in env


def test_login_wrapper_passes_values_as_parameters(call: Call) -> None:
    argv = login_wrapper_argv([b"/p/s", b"$(x)"], call(b"QUBESRPC s+$(x) src"))
    assert argv[:3] == [b"/bin/sh", b"-l", b"-c"]
    assert b"$(x)" not in argv[3]
    assert argv[4:] == [
        b"sh",
        b"QREXEC_SERVICE_FULL_NAME=s+$(x)",
        b"QREXEC_REMOTE_DOMAIN=src",
        b"QREXEC_SERVICE_ARGUMENT=$(x)",
        b"QREXEC_REQUESTED_TARGET_TYPE=",
        b"--",
        b"/p/s",
        b"$(x)",
    ]


def test_log_tag(call: Call) -> None:
    assert log_tag(call(b"QUBESRPC test.Svc+arg work")) == "test.Svc+arg-work"
    assert log_tag(call(b"QUBESRPC test.Svc work")) == "test.Svc-work"
