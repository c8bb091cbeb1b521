"""policy.RegisterArgument's checks
(docs/reference/cli.md#policyregisterargument), fed plain values."""

from __future__ import annotations

import pytest

from pyqrexec.policy.loaders import MemoryFiles, load_policy
from pyqrexec.policy.parser import Policy, parse_line
from pyqrexec.policy.registration import (
    Registration,
    RegistrationRefused,
    already_registered,
    check_argument,
    make_registration,
    policy_dirs,
)


def refusal(data: bytes) -> str:
    with pytest.raises(RegistrationRefused) as info:
        check_argument(data)
    return str(info.value)


def test_argument_accepts_one_to_sixty_four_allowed_bytes() -> None:
    assert check_argument(b"KEY1") == "KEY1"
    assert check_argument(b"a") == "a"
    allowed = b"ABCXYZabcxyz0189._-"
    assert check_argument(allowed) == allowed.decode()
    assert check_argument(b"k" * 64) == "k" * 64


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"k" * 65, "argument too long"),
        (b"/" * 65, "argument too long"),  # length is checked before content
        (b"", "empty argument"),
        (b"KEY/1", "invalid argument"),
        (b"KEY1\n", "invalid argument"),
        (b"KEY 1", "invalid argument"),
        (b"+KEY", "invalid argument"),
        (b"*", "invalid argument"),
        (b"KEY\x001", "invalid argument"),
        ("Kéy".encode(), "invalid argument"),
    ],
)
def test_argument_refusals_in_order(data: bytes, message: str) -> None:
    assert refusal(data) == message


def test_registration_line() -> None:
    r = make_registration("u2f.Authenticate", "KEY1", "work", "sys-usb")
    assert r == Registration("u2f.Authenticate", "KEY1", "work", "sys-usb")
    assert r.line == "u2f.Authenticate +KEY1 work sys-usb allow\n"
    rule = parse_line(r.line, "x.policy", 1)
    assert rule is not None and str(rule) == "u2f.Authenticate\t+KEY1\twork\tsys-usb\tallow"


@pytest.mark.parametrize(
    ("service", "frontend", "backend", "why"),
    [
        ("u2f.Authenticate", None, "sys-usb", "must name the frontend qube"),
        ("", "work", "sys-usb", "no service to register"),
        (None, "work", "sys-usb", "no service to register"),
        ("u2f.Authenticate", "work", "", "no calling qube"),
        ("u2f.Authenticate", "", "sys-usb", "wrong number of fields"),
        ("*", "work", "sys-usb", "only * argument allowed for * service"),
        ("u2f/Authenticate", "work", "sys-usb", "contains invalid characters"),
        ("!include", "work", "sys-usb", "contains invalid characters"),
        ("u2f.Authenticate", "work other", "sys-usb", "invalid frontend"),
        ("u2f.Authenticate", "work\n", "sys-usb", "invalid frontend"),
        ("u2f Authenticate", "work", "sys-usb", "invalid service"),
        ("u2f.Authenticate", "*", "sys-usb", "not a qube name"),
        ("u2f.Authenticate", "@anyvm", "sys-usb", "not a qube name"),
        ("u2f.Authenticate", "@tag:work", "sys-usb", "not a qube name"),
        ("u2f.Authenticate", "work", "@anyvm", "not a qube name"),
        ("u2f.Authenticate", "@default", "sys-usb", "invalid source token"),
    ],
)
def test_registration_refusals(
    service: str | None, frontend: str | None, backend: str, why: str
) -> None:
    with pytest.raises(RegistrationRefused) as info:
        make_registration(service, "KEY1", frontend, backend)
    assert why in str(info.value)


def test_dom0_and_uuid_names_are_qubes() -> None:
    registration = make_registration("s.S", "a", "uuid:1234", "dom0")
    assert registration.line == "s.S +a uuid:1234 dom0 allow\n"


def _policy(text: str) -> Policy:
    files = MemoryFiles({"/etc/qubes/policy.d/30-user.policy": text})
    return load_policy(files, ["/etc/qubes/policy.d"], "/nonexistent").policy


REG = Registration("u2f.Authenticate", "KEY1", "work", "sys-usb")


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("", False),
        ("u2f.Authenticate +KEY1 work sys-usb allow\n", True),
        # any rule for exactly SERVICE +ARG counts, whoever it is for and whatever it does
        ("u2f.Authenticate +KEY1 personal vault deny\n", True),
        ("u2f.Authenticate * work sys-usb allow\n", False),
        ("* * work sys-usb allow\n", False),
        ("u2f.Authenticate +KEY2 work sys-usb allow\n", False),
        ("u2f.Authenticate +KEY1x work sys-usb allow\n", False),
        ("u2f.Register +KEY1 work sys-usb allow\n", False),
    ],
)
def test_already_registered(text: str, found: bool) -> None:
    assert already_registered(_policy(text), REG) is found


def test_already_registered_through_legacy_files() -> None:
    files = MemoryFiles(
        {
            "/etc/qubes/policy.d/35-compat.policy": "!compat-4.0\n",
            "/etc/qubes-rpc/policy/u2f.Authenticate+KEY1": "sys-usb work allow\n",
        }
    )
    policy = load_policy(files, ["/etc/qubes/policy.d"], "/etc/qubes-rpc/policy").policy
    assert already_registered(policy, REG)


def test_policy_dirs_runtime_first() -> None:
    assert policy_dirs("/run/qubes/policy.d", "/etc/qubes/policy.d") == [
        "/run/qubes/policy.d",
        "/etc/qubes/policy.d",
    ]
    assert policy_dirs("/x", "/x") == ["/x"]
