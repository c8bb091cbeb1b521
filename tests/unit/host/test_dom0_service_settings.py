"""What qrexec-host's launchers of dom0 services restore of the host's settings."""

from __future__ import annotations

from pathlib import Path

from pyqrexec.host.dom0_side import DOM0_SERVICES, dom0_service_settings
from pyqrexec.host.paths import Paths


def test_settings_the_service_runner_would_remove_are_restored() -> None:
    paths = Paths.make(Path("/s"), Path("/d0"), {})
    base = {"PATH": "/usr/bin", "QREXEC_MAX_PROTOCOL_VERSION": "3",
            "QREXEC_REMOTE_DOMAIN": "evil", "QREXEC_REQUESTED_TARGET": "@anyvm",
            "QREXEC-ODD": "x"}
    settings = dom0_service_settings(paths.dom0_env(base))
    assert settings == {
        "QREXEC_POLICY_DIR": "/d0/etc/qubes/policy.d",
        "QREXEC_LOG_DIR": "/s/log",
        "QREXEC_POLICY_ADMIN_LOG": "/s/log/policy-admin.log",
        "QREXEC_LEGACY_POLICY_DIR": "/d0/etc/qubes-rpc/policy",
        "QREXEC_POLICY_SOCKET": "/s/policy.sock",
        "QREXEC_MAX_PROTOCOL_VERSION": "3",
    }


def test_register_argument_is_installed() -> None:
    assert DOM0_SERVICES["policy.RegisterArgument"] == "policy-register-argument"
