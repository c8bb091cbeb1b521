"""qrexec-daemon: dom0's daemon for one VM (docs/reference/cli.md#qrexec-daemon)."""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
from typing import TYPE_CHECKING

from ..protocol.ports import DEFAULT_SHARE, HALF, check_share
from ..system.defaults import DAEMON_SOCKET_DIR
from ..system.environment import Environment
from ..system.log import setup
from . import entry
from .args import GetoptError, getopt
from .resident import without_tls

if TYPE_CHECKING:  # at run time it comes after without_tls()
    from ..daemon.daemon import DaemonOptions

USAGE = """\
usage: qrexec-daemon [-h|--help] [-q|--quiet] [--socket-dir=PATH] [-p|--policy-program=PATH] \
[-D|--direct] [--max-ports-per-caller=N] -u|--uuid=UUID DOMID DOMNAME [DEFAULT_USER]
"""
_HELP = """
  --max-ports-per-caller=N
      most data ports one calling domain may hold at once in this VM's table:
      1..{half}, default {default} (or ${env}); {half} = only the caller's
      half of the table limits it. A call that gets no port is refused (qrexec-client-vm
      exits 126) once no call from here to that VM got one for {wait:g} s.
"""
_LOG_DIR = "/var/log/qubes"
#: the per-caller port share when --max-ports-per-caller is not given
SHARE_ENV = "QREXEC_MAX_PORTS_PER_CALLER"


def _startup_timeout() -> float | None:
    if "QREXEC_STARTUP_NOWAIT" in os.environ:
        return None
    text = os.environ.get("QREXEC_STARTUP_TIMEOUT", "")
    try:
        value = int(text)
    except ValueError:
        value = 60
    return float(value if value > 0 else 60)


def _port_share(option: str | None) -> int:
    """The per-caller port share: the option, else the environment, else the default."""
    text = option if option is not None else os.environ.get(SHARE_ENV)
    if text is None:
        return DEFAULT_SHARE
    try:
        return check_share(int(text))
    except ValueError:
        raise ValueError(f"invalid per-caller port share {text!r} (--max-ports-per-caller "
                         f"or ${SHARE_ENV})") from None


def _help() -> str:
    from ..daemon.worker import BUSY_WAIT  # lazy: asyncio after without_tls()

    return USAGE + _HELP.format(half=HALF, default=DEFAULT_SHARE, env=SHARE_ENV, wait=BUSY_WAIT)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        opts, pos = getopt(
            args, "hqp:Du:",
            ["help", "quiet", "socket-dir=", "policy-program=", "direct", "uuid=",
             "max-ports-per-caller="],
            gnu=True,
        )
    except GetoptError as err:
        sys.stderr.write(f"qrexec-daemon: {err}\n{USAGE}")
        return 1
    quiet = direct = False
    socket_dir = DAEMON_SOCKET_DIR
    policy_program = "/usr/bin/qrexec-policy-exec"
    uuid = None
    share_option = None
    for opt, val in opts:
        if opt in ("-h", "--help"):
            sys.stderr.write(_help())
            return 1
        if opt in ("-q", "--quiet"):
            quiet = True
        elif opt == "--socket-dir":
            socket_dir = val
        elif opt in ("-p", "--policy-program"):
            policy_program = val
        elif opt in ("-D", "--direct"):
            direct = True
        elif opt in ("-u", "--uuid"):
            uuid = val
        elif opt == "--max-ports-per-caller":
            share_option = val
    if uuid is None:
        sys.stderr.write("Domain UUID option missing!\n" + USAGE)
        return 1
    if len(pos) not in (2, 3):
        sys.stderr.write(USAGE)
        return 1
    try:
        domid = int(pos[0])
    except ValueError:
        domid = 0
    if domid <= 0:
        sys.stderr.write("domain id=0?\n")
        return 1
    name = pos[1]
    default_user = pos[2] if len(pos) == 3 else "user"
    try:
        port_share = _port_share(share_option)
    except ValueError as err:
        sys.stderr.write(f"qrexec-daemon: {err}\n{USAGE}")
        return 1

    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)

    from ..daemon.daemon import DaemonOptions  # lazy: asyncio after without_tls()

    env = Environment.current()
    options = DaemonOptions(
        domid=domid, name=name, uuid=uuid, default_user=default_user, socket_dir=socket_dir,
        vchan_dir=os.path.abspath(env.vchan_socket_dir), policy_program=policy_program,
        own_version=env.max_protocol_version, startup_timeout=_startup_timeout(),
        env=env, port_share=port_share,
    )
    if direct:
        return _child(options, None)
    return _launch(options, quiet)


def _launch(options: DaemonOptions, quiet: bool) -> int:
    """Fork: the child serves; the parent waits for its report (docs/reference/cli.md#qrexec-daemon,
    step 2)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        status = 1
        try:
            status = _child(options, wfd)
        finally:
            os._exit(status)
    os.close(wfd)
    if os.environ.get("QREXEC_STARTUP_NOWAIT") is not None:
        return 0
    if not quiet:
        sys.stderr.write("Waiting for VM's qrexec agent.")
        sys.stderr.flush()
    while True:
        ready, _, _ = select.select([rfd], [], [], 1.0)
        if not ready:
            if not quiet:
                sys.stderr.write(".")
                sys.stderr.flush()
            continue
        report = os.read(rfd, 1)
        break
    if not quiet:
        sys.stderr.write("\n")
    if report == b"0":
        if not quiet:
            sys.stderr.write("Connected to VM\n")
        return 0
    if report == b"3":
        timeout = options.startup_timeout
        sys.stderr.write(f"Cannot connect to '{options.name}' qrexec agent for "
                         f"{int(timeout or 0)} seconds, giving up\n")
        return 3
    sys.stderr.write("Connection to the VM failed\n")
    return 1


def _child(options: DaemonOptions, report_fd: int | None) -> int:
    import asyncio  # lazy: asyncio after without_tls()

    from ..daemon.daemon import Daemon, run_daemon  # lazy: asyncio after without_tls()
    from ..daemon.worker import call_worker  # lazy: asyncio after without_tls()

    setup("qrexec-daemon")
    log = logging.getLogger(__name__).info
    os.chdir(options.socket_dir)
    if report_fd is not None:
        _open_log(options.name)
        os.setsid()
    options.env.log_problems(log)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def ready() -> None:
        nonlocal report_fd
        try:
            os.setgid(os.getgid())
            os.setuid(os.getuid())
        except OSError as err:
            log(f"cannot drop privileges: {err}")
            raise SystemExit(1) from err
        if report_fd is not None:
            os.write(report_fd, b"0")
            os.close(report_fd)
            report_fd = None

    async def amain() -> int:
        daemon = Daemon(options, call_worker)
        return await run_daemon(daemon, ready)

    status = asyncio.run(amain())
    if report_fd is not None:
        os.write(report_fd, str(status).encode()[:1])
    return status


def _open_log(name: str) -> None:
    path = os.path.join(os.environ.get("QREXEC_LOG_DIR", _LOG_DIR), f"qrexec.{name}.log")
    old = os.umask(0o007)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
    except OSError:
        return
    finally:
        os.umask(old)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run() -> None:
    without_tls()
    entry(main)


if __name__ == "__main__":
    run()
