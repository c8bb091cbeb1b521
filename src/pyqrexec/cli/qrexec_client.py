"""qrexec-client: dom0 runs a command or service in a domain (docs/reference/cli.md#qrexec-client).

Kept light: only what a call needs is imported, and only when it is needed.
"""

from __future__ import annotations

import os
import sys

from ..compiled import load
from ..protocol.constants import DOM0_NAMES, EXIT_PROBLEM, IDENT_SIZE
from ..system.defaults import DAEMON_SOCKET_DIR
from . import client_log, start_up_over
from .args import NOT_A_NUMBER, GetoptError, UsageError, c_number, getopt, once

#: on a client's start-up path: importing `typing` would cost ~3 ms (mypy takes it as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from ..system.environment import Environment

#: what a call loads at each of its steps (`compiled.load`): to send its request, then, once
#: it went out, to read the answer and listen, then its relay
SENDING = ("pyqrexec.client", "pyqrexec.protocol.errors", "pyqrexec.protocol.wire",
           "pyqrexec.transport", "pyqrexec.transport.sockets", "pyqrexec.client.daemon_socket")
LISTENING = ("pyqrexec.protocol.handshake", "pyqrexec.system.environment",
             "pyqrexec.transport.unixsock", "pyqrexec.transport.vchan",
             "pyqrexec.protocol.records", "pyqrexec.protocol.sentinels",
             "pyqrexec.protocol.framing", "pyqrexec.protocol.session", "pyqrexec.transport.feed")
RELAYING = ("pyqrexec.call", "pyqrexec.protocol.data", "pyqrexec.call.traffic",
            "pyqrexec.call.relay")

USAGE = f"""\
usage: qrexec-client [options] -d DOMAIN [-l LOCAL_CMD | -c REQID,SRCNAME,SRCID | -e] USER:CMDLINE
  -h, --help            this text
  -d DOMAIN             target: name, uuid:UUID, domid, or dom0
  -l LOCAL_CMD          run LOCAL_CMD (bash -c) connected to the remote side
  -e                    just exec: report only whether the command started
  -E, --no-exit-code    always exit 0 after the command ends
  -c REQID,SRCNAME,SRCID  legacy connect mode
  -t / -T               replace unsafe bytes on stdout / stderr
  -w SECONDS            data connection timeout (0 = none; default 10)
  -W                    with -c: wait for the connection to end
  -k                    kill DOMAIN before exiting
  --socket-dir=PATH     daemon socket directory (default {DAEMON_SOCKET_DIR})
  -p, --prefix-data=DATA  send DATA before stdin
  --use-stdin-socket    fd 0 is a socket used for both directions
"""
#: -c to a VM failed (docs/reference/cli.md#qrexec-client-modes)
_EXIT_CONNECT_FAILED = 137


def _err(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def _strtol(text: str, what: str) -> int:
    """C strtol base 0 with upstream's checks; ValueError carries the message."""
    try:
        return c_number(text)
    except ValueError as err:
        raise ValueError(f"{what} {err}" if str(err) == NOT_A_NUMBER else f"{what}: {err}") from err


class _Args:
    domain: str | None = None
    local_cmd: str | None = None
    connect: tuple[str, str, int] | None = None
    just_exec = False
    no_exit_code = False
    filter_stdout = False
    filter_stderr = False
    timeout = 10.0
    wait = False
    kill = False
    socket_dir = DAEMON_SOCKET_DIR
    prefix: bytes | None = None
    stdin_socket = False
    cmdline: str | None = None


def _parse(argv: list[str]) -> _Args:
    # complexity 24: one branch per option, in upstream's order, kept flat so that each
    # option's rule reads in one place (a table would need a function per option anyway)
    a = _Args()
    try:
        opts, pos = getopt(
            argv, "hd:l:ec:tTEw:Wkp:",
            ["help", "socket-dir=", "prefix-data=", "use-stdin-socket", "no-exit-code"],
            gnu=True,
        )
    except GetoptError as err:
        raise UsageError(1, f"qrexec-client: {err}\n{USAGE}") from err
    modes = 0
    for opt, val in opts:
        if opt in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        if opt == "-d":
            a.domain = val
        elif opt == "-l":
            a.local_cmd = val
            modes += 1
        elif opt == "-e":
            a.just_exec = True
            modes += 1
        elif opt == "-c":
            if a.connect is not None:
                raise UsageError(1, "-c given twice")
            a.connect = _parse_connect(val)
            modes += 1
        elif opt == "-t":
            a.filter_stdout = True
        elif opt == "-T":
            a.filter_stderr = True
        elif opt in ("-E", "--no-exit-code"):
            a.no_exit_code = True
        elif opt == "-w":
            try:
                a.timeout = float(_strtol(val, "timeout"))
            except ValueError as err:
                raise UsageError(1, str(err)) from err
        elif opt == "-W":
            a.wait = True
        elif opt == "-k":
            a.kill = True
        elif opt == "--socket-dir":
            a.socket_dir = val
        elif opt in ("-p", "--prefix-data"):
            once(a.prefix is not None, "--prefix-data")
            a.prefix = os.fsencode(val)
        elif opt == "--use-stdin-socket":
            once(a.stdin_socket, "--use-stdin-socket")
            a.stdin_socket = True
    if modes > 1:
        raise UsageError(1, "ERROR: only one of -e, -l, -c can be specified")
    if a.local_cmd is not None and a.stdin_socket:
        raise UsageError(1, "ERROR: cannot use --use-stdin-socket with -l")
    if a.domain is None or not pos:
        raise UsageError(1, USAGE)
    a.cmdline = pos[0]
    return a


def _parse_connect(val: str) -> tuple[str, str, int]:
    parts = val.split(",")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise UsageError(1, 'Invalid -c parameter (should be: "-c request_id,src_domain_name,'
                        'src_domain_id")')
    reqid, src_name, src_id_text = parts
    if len(os.fsencode(reqid)) >= IDENT_SIZE:  # bytes, as the field holds them
        raise UsageError(1, "Invalid -c parameter (request_id too long, max 31)")
    if src_name in DOM0_NAMES:
        raise UsageError(1, "ERROR: -c cannot be used for requests to dom0")
    try:
        src_id = _strtol(src_id_text, "source domain id")
    except ValueError as err:
        raise UsageError(1, str(err)) from err
    if not 1 <= src_id <= 2**31 - 1:
        raise UsageError(1, "source domain id out of range")
    return reqid, src_name, src_id


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        _err(str(err).rstrip("\n"))
        return err.status
    stdin_sock = None
    if args.stdin_socket:
        from ..client.stdio import stdin_socket_pair

        try:
            stdin_sock = stdin_socket_pair()
        except OSError:
            _err("qrexec-client: --use-stdin-socket: stdin is not a stream socket")
            return 2
    assert args.domain is not None and args.cmdline is not None
    if args.domain not in DOM0_NAMES and args.connect is None:
        status, env = _call_vm(args, stdin_sock)
        if args.no_exit_code and status != EXIT_PROBLEM:
            status = 0
    else:
        from ..system.environment import Environment

        env = Environment.current()
        if args.domain in DOM0_NAMES:
            if args.connect is not None:
                return _connect_dom0(args, env)
            return _call_dom0(args, env)
        status = _connect_vm(args)
    if args.kill:
        _kill(args.domain, env)
    return status


def _logger() -> Callable[[str], None]:
    return client_log("qrexec-client")


def _kill(domain: str, env: Environment) -> None:
    """-k: ask qubesd to kill DOMAIN; a failure is only logged."""
    from ..qubesd.client import QubesdError, call

    try:
        call("admin.vm.Kill", domain, path=env.qubesd_socket)
    except QubesdError as err:
        _logger()(f"cannot kill {domain}: {err}")


def _call_dom0(args: _Args, env: Environment) -> int:
    """dom0 -> dom0: this process becomes the service (returns only on failure)."""
    from ..call.dom0_local import exec_dom0_service

    log = _logger()
    if args.local_cmd is not None:
        log("dom0 -> dom0 with -l: not yet implemented")
        return EXIT_PROBLEM
    assert args.cmdline is not None
    return exec_dom0_service(os.fsencode(args.cmdline), log, env)


def _ident_field(reqid: str) -> bytes:
    return os.fsencode(reqid).ljust(IDENT_SIZE, b"\0")


def _allocate(socket_dir: str, domain: str, msgtype: int, peer: int, payload: bytes,
              log: Callable[[str], None]) -> tuple[socket.socket, int, int] | None:
    """Connect DOMAIN's daemon and send one request with port 0
    (docs/reference/protocol.md#client-socket): the still open
    socket and the daemon's (domid, port) answer; None, after logging why, on failure."""
    sock = _send(socket_dir, domain, msgtype, peer, payload, log)
    if sock is None:
        return None
    answer = _answer(sock, domain, msgtype, log)
    if answer is None:
        return None
    return sock, answer[0], answer[1]


def _send(socket_dir: str, domain: str, msgtype: int, peer: int, payload: bytes,
          log: Callable[[str], None]) -> socket.socket | None:
    """`_allocate`'s first half: the request goes out, its answer is not read yet."""
    load(SENDING)
    from ..client.daemon_socket import DaemonNotRunning, send_request

    try:
        return send_request(socket_dir, domain, msgtype, peer, payload)
    except DaemonNotRunning as err:
        log(str(err.strerror))
    except OSError as err:
        log(f"cannot talk to the qrexec daemon of {domain}: {err}")
    return None


def _answer(sock: socket.socket, domain: str, msgtype: int,
            log: Callable[[str], None]) -> tuple[int, int] | None:
    """`_allocate`'s second half: the daemon's HELLO, then its answer (the socket is closed
    on failure)."""
    from ..client.daemon_socket import read_answer, read_hello
    from ..protocol.errors import ProtocolError

    try:
        session = read_hello(sock, msgtype)
    except (OSError, EOFError, ValueError, ProtocolError) as err:
        sock.close()
        log(f"cannot talk to the qrexec daemon of {domain}: {err}")
        return None
    try:
        return read_answer(sock, session)
    except (OSError, EOFError, ValueError, ProtocolError) as err:
        sock.close()
        log(f"request to the qrexec daemon of {domain} failed: {err}")
        return None


def _connect_dom0(args: _Args, env: Environment) -> int:
    """Legacy VM -> dom0 (docs/reference/protocol.md#legacy-connect-mode):
    docs/reference/protocol.md#vm-to-dom0 steps 3-5 for the pending request."""
    from ..call.dom0_service import run_dom0_service
    from ..protocol.constants import MsgType

    assert args.connect is not None and args.cmdline is not None
    reqid, src_name, _src_id = args.connect
    log = _logger()
    if not reqid:
        log("ERROR: request id must not be empty for calls to dom0")
        return EXIT_PROBLEM
    got = _allocate(args.socket_dir, src_name, MsgType.SERVICE_CONNECT, 0,
                    _ident_field(reqid), log)
    if got is None:
        return EXIT_PROBLEM
    sock, data_domain, port = got
    sock.close()
    env.log_problems(log)
    result = run_dom0_service(os.fsencode(args.cmdline), data_domain, port, env=env,
                              timeout=args.timeout or None,
                              remote_domain=os.fsencode(src_name), log=log)
    if args.no_exit_code and result.service_ran:
        return 0
    return result.status


def _connect_vm(args: _Args) -> int:
    """Legacy VM -> VM (docs/reference/protocol.md#legacy-connect-mode):
    docs/reference/protocol.md#vm-to-vm steps 7-8; 0 on success, 137 on failure."""
    from ..client.daemon_socket import connect_daemon, request
    from ..protocol.constants import MsgType
    from ..protocol.errors import ProtocolError

    assert args.connect is not None and args.domain is not None and args.cmdline is not None
    reqid, src_name, src_id = args.connect
    log = _logger()
    got = _allocate(args.socket_dir, args.domain, MsgType.EXEC_CMDLINE, src_id,
                    os.fsencode(args.cmdline) + b"\0", log)
    if got is None:
        return _EXIT_CONNECT_FAILED
    target, data_domain, port = got
    try:
        if not args.wait:
            target.close()
        source = connect_daemon(args.socket_dir, src_name)
        try:
            request(source, MsgType.SERVICE_CONNECT, data_domain, port, _ident_field(reqid))
        finally:
            source.close()
        if args.wait:
            # the target's daemon closes this socket when the data port is released
            target.settimeout(None)
            while target.recv(4096):
                pass
    except (OSError, EOFError, ValueError, ProtocolError) as err:
        log(f"cannot connect the service: {err}")
        return _EXIT_CONNECT_FAILED
    finally:
        target.close()
    return 0


def _call_vm(args: _Args, stdin_sock: tuple[socket.socket, socket.socket] | None
             ) -> tuple[int, Environment]:
    """The call's status, and the environment it ran in (for -k)."""
    from ..protocol.constants import MsgType

    log = _logger()
    assert args.domain is not None and args.cmdline is not None
    msgtype = MsgType.JUST_EXEC if args.just_exec else MsgType.EXEC_CMDLINE
    # the request goes out first: what this process loads from here on loads while the
    # daemon, the agent and the handler work on the call (docs/architecture.md#a-calls-start)
    sock = _send(args.socket_dir, args.domain, msgtype, 0, os.fsencode(args.cmdline) + b"\0",
                 log)
    load(LISTENING)
    from ..system.environment import Environment
    from ..transport import vchan

    env = Environment.current()
    env.log_problems(log)
    if sock is None:
        return EXIT_PROBLEM, env
    answer = _answer(sock, args.domain, msgtype, log)
    if answer is None:
        return EXIT_PROBLEM, env
    remote_domid, port = answer
    listener, path = vchan.listen(env.vchan_socket_dir, env.vchan_domain, remote_domid, port,
                                  pair_dirs=env.vchan_pair_dirs)
    proc = None
    local_in: int | None = 0
    local_out: int | None = 1
    in_sock = out_sock = None
    pidfd = None
    if args.local_cmd is not None:
        import subprocess

        from ..transport.unixsock import stdio_pair

        prog_in_ours, prog_in_theirs = stdio_pair()
        prog_out_ours, prog_out_theirs = stdio_pair()
        local_env = dict(env.variables, QREXEC_REMOTE_DOMAIN=args.domain)
        proc = subprocess.Popen(["/bin/bash", "-c", args.local_cmd],
                                stdin=prog_in_theirs.fileno(),
                                stdout=prog_out_theirs.fileno(), env=local_env)
        prog_in_theirs.close()
        prog_out_theirs.close()
        in_sock, out_sock = prog_out_ours, prog_in_ours
        local_in, local_out = prog_out_ours.fileno(), prog_in_ours.fileno()
        pidfd = os.pidfd_open(proc.pid)
    elif stdin_sock is not None:
        in_sock, out_sock = stdin_sock
        local_in, local_out = in_sock.fileno(), out_sock.fileno()
    # imported while the agent forks the handler that connects: the wait hides their cost
    load(RELAYING)
    from ..call.relay import run_caller

    # the daemon's socket is closed only now, with the listener up and the relay loaded: its
    # end wakes the daemon, which on a busy CPU would run first and hold both back, and
    # with them the handler waiting to connect (docs/architecture.md#a-calls-start)
    sock.close()

    try:
        channel = vchan.accept_one(listener, path, args.timeout or None)
    except OSError as err:
        log(f"data vchan connection failed: {err}")
        if proc is not None:
            proc.kill()
        return EXIT_PROBLEM, env

    if args.just_exec:
        local_in = None
    start_up_over()
    result = run_caller(
        channel, env.max_protocol_version, local_in, local_out, log,
        in_sock=in_sock, out_sock=out_sock, prefix=args.prefix or b"",
        filter_stdout=args.filter_stdout, filter_stderr=args.filter_stderr,
        local_done=(lambda: proc.poll() is not None) if proc is not None else None,
        local_wait_fd=pidfd,
        one_call=True,
    )
    channel.close()
    if result.no_hello:
        if proc is not None:
            proc.kill()
            proc.wait()
        return EXIT_PROBLEM, env
    status = result.exit_status
    if proc is not None:
        local = proc.wait()
        if status == 0:
            status = 128 - local if local < 0 else local
    return status, env


def run() -> None:
    from . import entry

    entry(main, quick_exit=True)


if __name__ == "__main__":
    run()
