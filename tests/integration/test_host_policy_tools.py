"""dom0's policy tools on a qrexec-host, end to end.

A backend qube registers an argument through qrexec-host's dom0, and the policy daemon then
allows the frontend's call with it. The requested-target variables a dom0 service gets when the
policy redirected the call to dom0 (docs/reference/services.md#arguments-and-environment,
docs/reference/protocol.md#vm-to-dom0). The Admin API from a qube, and the administrator's
tools run in dom0 with `qrexec-host run dom0`.

Plain mode only: dom0's side, which this is about, is the same in a sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from .fixtures.host import HostWorld, roots, service

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
policy.List * sys-usb @adminvm allow
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
    # sorted before 60-registered-arguments: the deny-all stays behind the registrations
    roots(top, ("dom0", "sys-usb", "work"), POLICY, "90-test")
    service(top / "dom0", "test.Env", ENV)
    service(top / "sys-usb", "u2f.Authenticate", U2F)
    return CONFIG


pytestmark = pytest.mark.host_world(layout=layout, sandboxes=["plain"])


def registered(host_world: HostWorld) -> Path:
    return host_world.dir / "dom0/etc/qubes/policy.d/60-registered-arguments.policy"


def register_log(host_world: HostWorld) -> str:
    path = host_world.state / "log/policy-register.log"
    return path.read_text() if path.exists() else ""


def test_redirected_call_tells_dom0_service_the_requested_target(host_world: HostWorld) -> None:
    done = host_world.host("call", "sys-usb", "work", "test.Env+x", input=b"")
    assert (done.returncode, done.stdout.decode()) == (
        0, "type=name target=work keyword=unset from=sys-usb service=test.Env+x\n"), done.stderr
    done = host_world.host("call", "sys-usb", "@default", "test.Env", input=b"")
    assert (done.returncode, done.stdout.decode()) == (
        0, "type=keyword target=unset keyword=default from=sys-usb service=test.Env+\n"), \
        done.stderr


def test_s70_register_argument(host_world: HostWorld) -> None:
    done = host_world.host("call", "sys-usb", "work", REGISTER, input=b"KEY1")
    assert done.returncode == 0, (done.stderr, register_log(host_world))
    assert registered(host_world).read_text() == "u2f.Authenticate +KEY1 work sys-usb allow\n"

    # the policy daemon sees the new file: the frontend may use the argument, and only it
    done = host_world.host("call", "work", "sys-usb", "u2f.Authenticate+KEY1", input=b"")
    assert (done.returncode, done.stdout) == (0, b"u2f in sys-usb for work with KEY1\n"), \
        done.stderr
    assert host_world.host("call", "work", "sys-usb", "u2f.Authenticate+KEY2",
                      input=b"").returncode != 0

    done = host_world.host("call", "sys-usb", "work", REGISTER, input=b"KEY1")
    assert done.returncode == 1
    assert register_log(host_world).endswith("refused: argument already registered\n")
    for data, message in ((b"KEY/1", "invalid argument"), (b"K" * 65, "argument too long")):
        done = host_world.host("call", "sys-usb", "work", REGISTER, input=data)
        assert done.returncode == 1, data
        assert register_log(host_world).endswith(f"refused: {message}\n")
    # a keyword names no frontend
    done = host_world.host("call", "sys-usb", "@default", REGISTER, input=b"KEY3")
    assert done.returncode == 1
    assert "-> (unset): u2f.Authenticate +KEY3: refused: the call must name the frontend" \
        in register_log(host_world)
    assert registered(host_world).read_text() == "u2f.Authenticate +KEY1 work sys-usb allow\n"


def test_admin_api_from_a_qube(host_world: HostWorld) -> None:
    done = host_world.host("call", "sys-usb", "dom0", "policy.List", input=b"")
    assert done.returncode == 0, done.stderr
    # 60-registered-arguments may be there too, after S70
    assert b"90-test" in done.stdout.splitlines()
    # the rule allows listing only
    done = host_world.host("call", "sys-usb", "dom0", "policy.Get+90-test", input=b"")
    assert done.returncode == 126


def test_policy_tools_run_in_dom0(host_world: HostWorld) -> None:
    def dom0(*cmd: str, input: bytes = b"") -> bytes:
        done = host_world.host("run", "dom0", "--", *cmd, input=input)
        assert done.returncode == 0, (cmd, done.stderr)
        return done.stdout

    assert b"90-test\n" in dom0("qubes-policy", "-l")
    refused = host_world.host("call", "work", "@default", "test.Env", input=b"")
    assert refused.returncode == 126
    dom0("qubes-policy", "-r", "20-admin",
         input=b"test.Env * work @default allow target=dom0\n")
    assert (host_world.dir / "dom0/etc/qubes/policy.d/20-admin.policy").read_text() == \
        "test.Env * work @default allow target=dom0\n"
    done = host_world.host("call", "work", "@default", "test.Env", input=b"")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(b"from=work service=test.Env+\n")
    assert '  "work" -> "dom0" [label="test.Env" color=red];' in \
        dom0("qrexec-policy-graph", "--service", "test.Env").decode().splitlines()
    # one word is a shell command line, as for a domain
    listed = dom0("qubes-policy -d 20-admin && qubes-policy -l").splitlines()
    assert b"90-test" in listed and b"20-admin" not in listed
    assert host_world.host("call", "work", "@default", "test.Env", input=b"").returncode == 126


def test_dom0_has_no_agent_to_call_from(host_world: HostWorld) -> None:
    done = host_world.host("call", "dom0", "work", "test.Env", input=b"")
    assert done.returncode == 2
    assert b"dom0 has no qrexec-agent" in done.stderr


def test_logs_audit_shows_a_call_and_its_end(host_world: HostWorld) -> None:
    """docs/audit.md: `qrexec-host logs --audit` reads the host's trail; a VM -> dom0 call
    has its decision and its end, with the bytes dom0 relayed."""
    import json
    import time

    done = host_world.host("call", "sys-usb", "work", "test.Env+audited", input=b"")
    assert done.returncode == 0, done.stderr
    returned = len(done.stdout)

    def shown(*args: str) -> list[dict[str, object]]:
        out = host_world.host("logs", "--audit", "--service", "test.Env+audited", *args)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    deadline = time.monotonic() + 20
    while len(found := shown("--json")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the end report reaches the trail after the call: poll for it
    decision, end = found
    assert (decision["event"], decision["source"], decision["intended_target"],
            decision["target"], decision["decision"]) == (
        "decision", "sys-usb", "work", "dom0", "allow")
    assert decision["rule"].endswith("90-test.policy:3")  # type: ignore[union-attr]
    assert (end["event"], end["call"], end["scope"], end["status"]) == (
        "end", decision["call"], "call", 0)
    assert (end["bytes_in"], end["bytes_out"]) == (0, returned)
    # the table, filtered the same way
    table = host_world.host("logs", "--audit", "--service", "test.Env+audited", "--event", "end")
    [line] = table.stdout.decode().splitlines()
    assert f"  {decision['call']}  sys-usb -> dom0  test.Env+audited  call" in line
