"""S70 end to end: a backend qube registers an argument through qrexec-host's dom0, and the
policy daemon then allows the frontend's call with it. Also the requested-target variables a dom0
service gets when the policy redirected the call to dom0 (services.md §4.1, protocol.md §11.D).

Plain mode only: dom0's side, which this is about, is the same in a sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .host_world import HostWorld, service

CONFIG = """\
[domains.dom0]

[domains.sys-usb]
autostart = true

[domains.work]
"""

POLICY = """\
policy.RegisterArgument +u2f.Authenticate sys-usb @anyvm allow target=dom0
policy.RegisterArgument +u2f.Authenticate sys-usb @default allow target=dom0
test.Env * sys-usb @anyvm allow target=dom0
test.Env * sys-usb @default allow target=dom0
u2f.Authenticate * @anyvm @anyvm deny
"""

ENV = """\
#!/bin/sh
echo "type=$QREXEC_REQUESTED_TARGET_TYPE target=${QREXEC_REQUESTED_TARGET-unset}" \\
     "keyword=${QREXEC_REQUESTED_TARGET_KEYWORD-unset} from=$QREXEC_REMOTE_DOMAIN" \\
     "service=$QREXEC_SERVICE_FULL_NAME"
"""

U2F = """\
#!/bin/sh
echo "u2f in sys-usb for $QREXEC_REMOTE_DOMAIN with $QREXEC_SERVICE_ARGUMENT"
"""

REGISTER = "policy.RegisterArgument+u2f.Authenticate"


def layout(top: Path) -> str:
    for name in ("dom0", "sys-usb", "work"):
        (top / name).mkdir()
    policy = top / "dom0/etc/qubes/policy.d"
    policy.mkdir(parents=True)
    # sorted before 60-registered-arguments: the deny-all stays behind the registrations
    (policy / "90-test.policy").write_text(POLICY)
    service(top / "dom0", "test.Env", ENV)
    service(top / "sys-usb", "u2f.Authenticate", U2F)
    return CONFIG


@pytest.fixture(scope="module")
def world() -> Iterator[HostWorld]:
    w = HostWorld("plain", layout).up()
    try:
        yield w
    finally:
        w.close()


def registered(world: HostWorld) -> Path:
    return world.dir / "dom0/etc/qubes/policy.d/60-registered-arguments.policy"


def register_log(world: HostWorld) -> str:
    path = world.state / "log/policy-register.log"
    return path.read_text() if path.exists() else ""


def test_redirected_call_tells_dom0_service_the_requested_target(world: HostWorld) -> None:
    done = world.host("call", "sys-usb", "work", "test.Env+x", input=b"")
    assert (done.returncode, done.stdout.decode()) == (
        0, "type=name target=work keyword=unset from=sys-usb service=test.Env+x\n"), done.stderr
    done = world.host("call", "sys-usb", "@default", "test.Env", input=b"")
    assert (done.returncode, done.stdout.decode()) == (
        0, "type=keyword target=unset keyword=default from=sys-usb service=test.Env+\n"), \
        done.stderr


def test_s70_register_argument(world: HostWorld) -> None:
    done = world.host("call", "sys-usb", "work", REGISTER, input=b"KEY1")
    assert done.returncode == 0, (done.stderr, register_log(world))
    assert registered(world).read_text() == "u2f.Authenticate +KEY1 work sys-usb allow\n"

    # the policy daemon sees the new file: the frontend may use the argument, and only it
    done = world.host("call", "work", "sys-usb", "u2f.Authenticate+KEY1", input=b"")
    assert (done.returncode, done.stdout) == (0, b"u2f in sys-usb for work with KEY1\n"), \
        done.stderr
    assert world.host("call", "work", "sys-usb", "u2f.Authenticate+KEY2",
                      input=b"").returncode != 0

    done = world.host("call", "sys-usb", "work", REGISTER, input=b"KEY1")
    assert done.returncode == 1
    assert register_log(world).endswith("refused: argument already registered\n")
    for data, message in ((b"KEY/1", "invalid argument"), (b"K" * 65, "argument too long")):
        done = world.host("call", "sys-usb", "work", REGISTER, input=data)
        assert done.returncode == 1, data
        assert register_log(world).endswith(f"refused: {message}\n")
    # a keyword names no frontend
    done = world.host("call", "sys-usb", "@default", REGISTER, input=b"KEY3")
    assert done.returncode == 1
    assert "-> (unset): u2f.Authenticate +KEY3: refused: the call must name the frontend" \
        in register_log(world)
    assert registered(world).read_text() == "u2f.Authenticate +KEY1 work sys-usb allow\n"
