"""qubes-policy-admin: the dom0 service behind policy.List, .Get, .Replace, .Remove, .GetFiles
and policy.include.* (docs/reference/cli.md#qubes-policy-admin).

Method from QREXEC_SERVICE_FULL_NAME, payload on stdin, result on stdout. A refused request
prints `ClassName message` on stderr and exits 1; anything unexpected is logged with its
traceback and exits 2.
"""

from __future__ import annotations

import logging
import os
import sys

from ..policy.admin import PolicyAdminException, PolicyAdminProtocolException, parse_request
from ..policy_daemon.admin_directory import PolicyDirectory
from ..system.environment import Environment
from . import entry

__all__ = ["main", "run", "DEFAULT_LOG", "MAX_PAYLOAD"]

DEFAULT_LOG = "/var/log/qubes/policy-admin.log"
#: far above any policy file; the payload comes from another domain and is held in memory
MAX_PAYLOAD = 16 * 1024 * 1024


def _logger(path: str) -> logging.Logger:
    log = logging.getLogger("qubes-policy-admin")
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        # no log directory (a plain host): serve the request anyway; stderr belongs to the caller
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    return log


def _printable(text: str) -> str:
    """The caller's text made safe for one log line."""
    return "".join(c if c.isprintable() else "?" for c in text)


def main() -> int:
    log_path = os.environ.get("QREXEC_POLICY_ADMIN_LOG", DEFAULT_LOG)
    log = _logger(log_path)
    call = _printable(os.environ.get("QREXEC_SERVICE_FULL_NAME", ""))
    source = _printable(os.environ.get("QREXEC_REMOTE_DOMAIN", ""))
    env = Environment.current()
    directory = PolicyDirectory(env.persistent_policy_dir, env.legacy_policy_dir)
    try:
        payload = sys.stdin.buffer.read(MAX_PAYLOAD + 1)
        if len(payload) > MAX_PAYLOAD:
            raise PolicyAdminProtocolException("Payload too large")
        request = parse_request(os.environ.get("QREXEC_SERVICE_FULL_NAME", ""), payload)
        output = directory.handle(request)
    except PolicyAdminException as exc:
        log.warning("%s (%s): error: %s", call, source, _printable(str(exc)))
        sys.stderr.write(exc.wire())
        return 1
    except Exception:  # the program's outer edge: log it all, tell the caller where to look
        log.exception("%s (%s): exception", call, source)
        sys.stderr.write(f"Internal error. See {log_path!r} in dom0 for details.")
        return 2
    log.info("%s (%s)", call, source)
    sys.stdout.buffer.write(output)
    sys.stdout.flush()
    return 0


def run() -> None:
    entry(main)


if __name__ == "__main__":
    run()
