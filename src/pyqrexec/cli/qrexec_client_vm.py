"""qrexec-client-vm: a VM calls a service in another domain
(docs/reference/cli.md#qrexec-client-vm).

Kept light: only what a call needs is imported, and only when it is needed.
"""

from __future__ import annotations

import os
import sys

from ..compiled import load
from ..system.defaults import AGENT_SOCKET
from . import client_log, start_up_over
from .args import NOT_A_NUMBER, GetoptError, UsageError, c_number, getopt, once

#: on a client's start-up path: importing `typing` would cost ~3 ms (mypy takes it as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

    from ..system.environment import Environment

USAGE = f"""\
usage: qrexec-client-vm [options] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARG...]]
  -h, --help                      this text
  --buffer-size=N                 minimum data buffer per direction
  -t, --filter-escape-chars-stdout   filter stdout
  -T, --filter-escape-chars-stderr   filter the service's stderr
  --no-filter-escape-chars-stdout, --no-filter-escape-chars-stderr
  -a, --agent-socket=PATH         default {AGENT_SOCKET}
  -p, --prefix-data=DATA          send DATA before stdin
  --use-stdin-socket              fd 0 (a stream socket) for both directions
  -s, --source-qube=NAME          requested source for relayed calls
"""
_LONG = [
    "help", "buffer-size=", "filter-escape-chars-stdout", "filter-escape-chars-stderr",
    "no-filter-escape-chars-stdout", "no-filter-escape-chars-stderr", "agent-socket=",
    "prefix-data=", "use-stdin-socket", "source-qube=",
]


#: what a call loads at each of its steps (`compiled.load`): to send its trigger, then,
#: once it went out, to listen and relay
SENDING = ("pyqrexec.protocol", "pyqrexec.protocol.errors", "pyqrexec.protocol.constants",
           "pyqrexec.protocol.records", "pyqrexec.protocol.wire", "pyqrexec.protocol.messages",
           "pyqrexec.transport", "pyqrexec.transport.sockets")
CALLING = ("pyqrexec.call", "pyqrexec.protocol.sentinels", "pyqrexec.protocol.framing",
           "pyqrexec.protocol.handshake", "pyqrexec.protocol.data",
           "pyqrexec.transport.unixsock", "pyqrexec.call.traffic", "pyqrexec.call.relay",
           "pyqrexec.system.environment", "pyqrexec.system.log", "pyqrexec.transport.vchan")


def _parse_size(text: str) -> int:
    """C strtoul base 0 with upstream's checks."""
    try:
        value = c_number(text)
    except ValueError as err:
        reason = "does not begin with a number" if str(err) == NOT_A_NUMBER else str(err)
        raise UsageError(1, f"Bad buffer size: {reason}") from err
    if value > 2**31 - 1:
        raise UsageError(1, "Bad buffer size: too large")
    return value


class _Args:
    filter_stdout: bool | None = None
    filter_stderr: bool | None = None
    agent_socket = AGENT_SOCKET
    prefix: bytes | None = None
    stdin_socket = False
    source: bytes | None = None
    target = b""
    service = b""
    program: list[str] | None = None
    saved: dict[str, int] | None = None


def _parse(argv: list[str]) -> _Args:
    a = _Args()
    try:
        opts, pos = getopt(argv, "htTa:p:s:", _LONG)
    except GetoptError as err:
        raise UsageError(2, f"qrexec-client-vm: {err}\n{USAGE}") from err
    for opt, val in opts:
        if opt in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        if opt == "--buffer-size":
            _parse_size(val)
        elif opt in ("-t", "--filter-escape-chars-stdout"):
            a.filter_stdout = True
        elif opt in ("-T", "--filter-escape-chars-stderr"):
            a.filter_stderr = True
        elif opt == "--no-filter-escape-chars-stdout":
            a.filter_stdout = False
        elif opt == "--no-filter-escape-chars-stderr":
            a.filter_stderr = False
        elif opt in ("-a", "--agent-socket"):
            a.agent_socket = val
        elif opt in ("-p", "--prefix-data"):
            once(a.prefix is not None, "--prefix-data")
            a.prefix = os.fsencode(val)
        elif opt == "--use-stdin-socket":
            once(a.stdin_socket, "--use-stdin-socket")
            a.stdin_socket = True
        elif opt in ("-s", "--source-qube"):
            once(a.source is not None, "--source-qube")
            a.source = os.fsencode(val)
    if len(pos) < 2:
        raise UsageError(2, USAGE)
    a.target = os.fsencode(pos[0])
    a.service = os.fsencode(pos[1])
    if len(pos) > 2:
        a.program = pos[2:]
        if a.stdin_socket:
            raise UsageError(2, "cannot spawn a local process with --use-stdin-socket")
    return a


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        sys.stderr.write(str(err).rstrip("\n") + "\n")
        return err.status
    if args.program is not None:
        # before anything else is opened, so the numbers are small: services written for
        # dash use `>&$SAVED_FD_1`, and dash accepts only one-digit descriptors
        args.saved = {"SAVED_FD_0": os.dup(0), "SAVED_FD_1": os.dup(1)}
        if "PASS_LOCAL_STDERR" in os.environ:
            args.saved["SAVED_FD_2"] = os.dup(2)
    load(SENDING)
    from ..protocol.errors import LocalProtocolError
    from ..protocol.messages import client_trigger
    from ..transport.sockets import unix_stream

    try:
        request = client_trigger(args.service, args.target, args.source or b"")
    except LocalProtocolError as err:
        sys.stderr.write(f"qrexec-client-vm: {err}\n")
        return 1
    agent = unix_stream()
    try:
        agent.connect(args.agent_socket)
        agent.sendall(request)
        # what the call needs next is imported while the policy decides and the target's
        # handler starts: the wait hides their cost
        load(CALLING)

        answer = b""
        while len(answer) < 8:
            chunk = agent.recv(8 - len(answer))
            if not chunk:
                break
            answer += chunk
    except OSError as err:
        sys.stderr.write(f"qrexec-client-vm: cannot talk to the agent: {err}\n")
        return 1
    if not answer:
        sys.stderr.write("Request refused\n")
        return 126
    if len(answer) < 8:
        sys.stderr.write("qrexec-client-vm: short answer from the agent\n")
        return 1
    from ..protocol.wire import parse_exec_params_only

    domain, port = parse_exec_params_only(answer)
    try:
        return _call(args, domain, port)
    finally:
        agent.close()


def _call(args: _Args, domain: int, port: int) -> int:

    from ..system.environment import Environment
    from ..transport import vchan

    log = client_log("qrexec-client-vm")
    env = Environment.current()
    env.log_problems(log)
    listener, path = vchan.listen(env.vchan_socket_dir, env.vchan_domain, domain, port,
                                  pair_dirs=env.vchan_pair_dirs)
    local_in: int | None = 0
    local_out: int | None = 1
    in_sock = out_sock = None
    child = None
    pidfd = None
    single = None
    if args.program is not None:
        from ..call.relay import SingleSocket

        single = SingleSocket()  # before the program exists: it may signal at once
        child, in_sock, out_sock = _spawn_local(args.program, args.saved or {}, env)
        local_in, local_out = in_sock.fileno(), out_sock.fileno()
        pidfd = os.pidfd_open(child)
    elif args.stdin_socket:
        from ..client.stdio import stdin_socket_pair

        try:
            in_sock, out_sock = stdin_socket_pair()
        except OSError:
            sys.stderr.write("qrexec-client-vm: --use-stdin-socket: stdin is not a socket\n")
            return 2
        local_in, local_out = in_sock.fileno(), out_sock.fileno()
    filter_stdout = args.filter_stdout
    if filter_stdout is None:
        filter_stdout = args.program is None and os.isatty(1)
    filter_stderr = args.filter_stderr if args.filter_stderr is not None else os.isatty(2)
    try:
        channel = vchan.accept_one(listener, path, 120.0)
    except OSError as err:
        log(f"Data vchan connection failed: {err}")
        return 1
    from ..call.relay import run_caller

    local_status: list[int] = []

    def local_done() -> bool:
        if child is None:
            return True
        if not local_status:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid == 0:
                return False
            code = os.waitstatus_to_exitcode(status)
            local_status.append(128 - code if code < 0 else code)
        return True

    start_up_over()
    result = run_caller(
        channel, env.max_protocol_version, local_in, local_out, log,
        in_sock=in_sock, out_sock=out_sock, prefix=args.prefix or b"",
        filter_stdout=filter_stdout, filter_stderr=filter_stderr,
        local_done=local_done if child is not None else None, local_wait_fd=pidfd,
        single_socket=single,
        one_call=True,
    )
    channel.close()
    status = result.exit_status
    # 0 means the remote exit code came and the relay saw the local program exit too; without
    # an exit code (target gone, channel broken) the call is over whatever the program does
    if child is not None and status == 0 and local_done():
        status = local_status[0]
    return status


def _spawn_local(
    program: list[str], saved_fds: dict[str, int], base_env: Environment
) -> tuple[int, socket.socket, socket.socket]:
    """LOCAL_PROGRAM with socket pairs as stdin/stdout and the SAVED_FD_* variables."""
    from ..transport.unixsock import stdio_pair

    prog_in_ours, prog_in_theirs = stdio_pair()
    prog_out_ours, prog_out_theirs = stdio_pair()
    env = dict(base_env.variables)
    env.update((k, str(v)) for k, v in saved_fds.items())
    env["QREXEC_AGENT_PID"] = str(os.getpid())
    saved = list(saved_fds.values())
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.dup2(prog_in_theirs.fileno(), 0)
            os.dup2(prog_out_theirs.fileno(), 1)
            for fd in saved:
                os.set_inheritable(fd, True)
            os.execve(program[0], [os.path.basename(program[0]), *program[1:]], env)
        except BaseException:  # noqa: BLE001 - exec failure: the child exits 255
            os._exit(255)
    prog_in_theirs.close()
    prog_out_theirs.close()
    for fd in saved:
        os.close(fd)
    return pid, prog_out_ours, prog_in_ours
def run() -> None:
    from . import entry

    entry(main, quick_exit=True)


if __name__ == "__main__":
    run()
