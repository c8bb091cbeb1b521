"""Starting what a command asks for: an executable, a socket or a TCP service
(docs/reference/services.md#socket-services, docs/reference/services.md#executable-services).

This is the I/O edge the relays call. `start_command` never blocks on the service itself; the
result is either the streams of a started service, a detached start (just-exec), or a failure
detected before anything was started (the relay logs `Failed.message` and reports the status).
Failures of the started program itself (execve error, token count, user checks) are reported,
as upstream does, as the exit status of a real process so the relay handles a single case.

`prepare_command` does all of it but the start (`Prepared.start`): a call handler prepares
while it waits for its caller's data channel, and starts only once it is up. Socket and TCP
services, which connecting starts, are in `connected`.
"""

from __future__ import annotations

import enum
import os
import pwd
import socket
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from ..protocol.cmdline import Command, ServiceCall
from ..protocol.constants import EXIT_PROBLEM, EXIT_SERVICE_NOT_FOUND
from ..protocol.records import record
from ..system.environment import Environment
from ..transport.unixsock import stdio_pair
from .environment import (
    inherited_environment,
    log_tag,
    login_wrapper_argv,
    service_argv,
    service_environment,
    valid_token_count,
)
from .launch import DEVNULL, find_program, launch
from .lookup import LookupFailure, ServiceKind, find_service, load_service_config
from .rpcconfig import DEFAULT_CONFIG, ServiceConfig
from .syslogcopy import open_syslog_writer

__all__ = [
    "Executor",
    "SpawnContext",
    "Started",
    "Detached",
    "Failed",
    "service_config_for",
    "Prepared",
    "prepare_command",
    "start_command",
]


class Executor(enum.Enum):
    """Who runs the service (docs/reference/services.md#who-runs-services); decides user handling
    and how shells are started."""

    #: VM agent running as root: switches to the requested user's login context
    ROOT_AGENT = "root-agent"
    #: VM agent running as an ordinary user: the requested user must be that user
    USER_AGENT = "user-agent"
    #: fork server inside the user's session: no user switch, `$SHELL -c`
    FORK_SERVER = "fork-server"
    #: dom0 request worker or qrexec-client: stderr inherited, `/bin/bash -c`, no force-user
    DOM0 = "dom0"


def _ignore(message: str) -> None:
    pass


#: no variables added (a read-only default shared by every context)
_NO_VARIABLES: Mapping[bytes, bytes] = MappingProxyType({})


@record
class SpawnContext:
    executor: Executor
    service_path: Sequence[str]
    #: the program's environment: what the service inherits (`environb`, filtered,
    #: docs/reference/services.md#arguments-and-environment) and `PATH` for setpriv and logger
    env: Environment
    #: rpc-config directories; empty: no configuration is read (fork server)
    rpc_config_path: Sequence[str] = ()
    #: value of QREXEC_AGENT_PID: the per-call handler
    handler_pid: int | None = None
    #: JUST_EXEC: stdin/stdout on /dev/null, stderr to the system log, nothing to relay
    just_exec: bool = False
    #: dom0 -> dom0 calls (`qrexec-client -d dom0`): socket and TCP services are refused
    executables_only: bool = False
    #: USER_AGENT: the agent's own user name; None: looked up from the effective uid
    own_user: str | None = None
    log: Callable[[str], None] = _ignore
    #: ROOT_AGENT: the program that switches to the target user (util-linux)
    setpriv: str = "setpriv"
    #: added to a shell command's environment after the `QREXEC*` filtering (dom0 service
    #: callers pass `QREXEC_REMOTE_DOMAIN`)
    shell_env: Mapping[bytes, bytes] = _NO_VARIABLES


@record
class Started:
    #: None for socket/TCP services
    pid: int | None
    #: write service input here; EOF = stdin.shutdown(SHUT_WR)
    stdin: socket.socket
    #: read service output (the same socket object as stdin for socket/TCP services)
    stdout: socket.socket
    #: read end of a pipe carrying service stderr (None: no separate stderr stream)
    stderr: int | None
    #: the rpc-config settings applied (exit-on-client-eof and exit-on-service-eof are the
    #: relay's to honour)
    config: ServiceConfig = DEFAULT_CONFIG
    #: the process leads a session of its own (a root agent's calls): the scheduler puts it
    #: in its own group, apart from the relay (relay.run_service `batch`)
    own_session: bool = False


@record
class Detached:
    """Just-exec: the service was started (pid) or its socket written to and closed (None)."""

    pid: int | None


@record
class Failed:
    #: 125 or 127
    status: int
    #: log line, e.g. "Service not found: test.Foo+"
    message: str


Result = Started | Detached | Failed


def service_config_for(command: Command, ctx: SpawnContext) -> ServiceConfig | Failed:
    """The rpc-config that applies to `command` (defaults when none); warnings are logged.

    Agents call this first: it decides wait-for-session, force-user and the fork server.
    """
    call = command.service
    if call is None or not ctx.rpc_config_path:
        return DEFAULT_CONFIG
    if command.nogui and ctx.executor is Executor.DOM0:
        return DEFAULT_CONFIG
    loaded = load_service_config(call, ctx.rpc_config_path)
    if isinstance(loaded, LookupFailure):
        return Failed(loaded.status, loaded.message)
    for warning in loaded.warnings:
        ctx.log(warning)
    return loaded.config


class Prepared:
    """What `start_command` will do for one command, decided and set up with nothing started
    yet: a call handler prepares while its caller is still getting ready to accept the data
    channel, and starts once that channel is up (docs/architecture.md#a-calls-start)."""

    __slots__ = ("_start", "_stdio")

    def __init__(self, start: Callable[[], Result], stdio: _Stdio | None = None) -> None:
        self._start = start
        #: the child's streams opened ahead, ours to close until the start takes them
        self._stdio = stdio

    def start(self) -> Result:
        """Start it (once): the same result `start_command` gives."""
        self._stdio = None
        start, self._start = self._start, _started_twice
        return start()

    def discard(self) -> None:
        """Drop what was set up ahead, when it will not be started."""
        if self._stdio is not None:
            self._stdio.close_all()
            self._stdio = None


def _started_twice() -> Result:
    raise RuntimeError("a prepared command starts once")


def _done(result: Result) -> Prepared:
    return Prepared(lambda: result)


def prepare_command(
    command: Command, user: str, ctx: SpawnContext, config: ServiceConfig | None = None
) -> Prepared:
    """`start_command` up to the start: configuration, lookup, checks, environment and the
    child's streams. Raises `OSError` when those streams cannot be opened."""
    call = command.service
    if call is None:
        return _prepare_shell_command(command.text, user, ctx)
    if config is None:
        loaded = service_config_for(command, ctx)
        if isinstance(loaded, Failed):
            return _done(loaded)
        config = loaded
    if config.force_user is not None and ctx.executor is not Executor.DOM0:
        user = config.force_user
    found = find_service(call, ctx.service_path)
    if isinstance(found, LookupFailure):
        return _done(Failed(found.status, found.message))
    if found.kind is ServiceKind.EXECUTABLE:
        for key in config.socket_only_keys:
            ctx.log(f"ignoring {key} for executable service {os.fsdecode(found.path)}")
        return _prepare_service(found.path, call, user, ctx)
    if ctx.executables_only:
        return _done(Failed(
            EXIT_PROBLEM, f"{found.kind.value} services not supported for dom0 -> dom0 calls"
        ))
    from .connected import start_connected  # lazy: socket and TCP services are the rare kind

    # connecting is starting: a socket service sees the call at once
    return Prepared(lambda: start_connected(command, call, found, config, ctx))


def start_command(
    command: Command, user: str, ctx: SpawnContext, config: ServiceConfig | None = None
) -> Result:
    """Start what `command` asks for as `user`; `config` when the caller already loaded it."""
    return prepare_command(command, user, ctx, config).start()


# --- executables ---------------------------------------------------------------------------


class _Stdio:
    """The child's descriptors 0-2 and the handler's ends of them."""

    __slots__ = ("child", "stdin", "stdout", "stderr", "to_close")

    def __init__(self, child: tuple[int, int, int], stdin: socket.socket | None = None,
                 stdout: socket.socket | None = None, stderr: int | None = None,
                 to_close: list[int] | None = None) -> None:
        self.child = child
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        #: ours to close once the child has them
        self.to_close = [] if to_close is None else to_close

    def close_child_ends(self) -> None:
        for fd in self.to_close:
            os.close(fd)
        self.to_close.clear()

    def close_all(self) -> None:
        self.close_child_ends()
        for sock in (self.stdin, self.stdout):
            if sock is not None:
                sock.close()
        if self.stderr is not None:
            os.close(self.stderr)


def _open_stdio(ctx: SpawnContext, tag: str | None) -> _Stdio:
    if ctx.just_exec:
        writer = open_syslog_writer(tag, ctx.env) if tag is not None else None
        if writer is None:
            return _Stdio((DEVNULL, DEVNULL, 2))
        return _Stdio((DEVNULL, DEVNULL, writer), to_close=[writer])
    ours_in, child_in = stdio_pair()
    ours_out, child_out = stdio_pair()
    to_close = [child_in.detach(), child_out.detach()]
    if ctx.executor is Executor.DOM0:
        return _Stdio((to_close[0], to_close[1], 2), ours_in, ours_out, None, to_close)
    err_read, err_write = os.pipe()
    to_close.append(err_write)
    return _Stdio((to_close[0], to_close[1], err_write), ours_in, ours_out, err_read, to_close)


def _result(pid: int, stdio: _Stdio, own_session: bool = False) -> Result:
    stdio.close_child_ends()
    if stdio.stdin is None or stdio.stdout is None:
        return Detached(pid)
    return Started(pid, stdio.stdin, stdio.stdout, stdio.stderr, own_session=own_session)


def _exit_with(status: int, message: str, stdio: _Stdio, ctx: SpawnContext) -> Result:
    """A process that only exits with `status`, `message` first written to its stderr."""
    ctx.log(message)
    error_fd = stdio.child[2]
    if error_fd >= 3:
        try:
            os.write(error_fd, message.encode(errors="replace") + b"\n")
        except OSError:
            pass
    try:
        pid = launch(b"/bin/sh", [b"sh", b"-c", b"exit %d" % status], {}, stdio.child)
    except OSError as err:
        stdio.close_all()
        return Failed(status, f"{message} (and cannot start a process: {err.strerror})")
    return _result(pid, stdio)


def _exec(
    path: bytes,
    argv: Sequence[bytes],
    env: Mapping[bytes, bytes],
    stdio: _Stdio,
    ctx: SpawnContext,
    *,
    setsid: bool = False,
) -> Result:
    try:
        pid = launch(path, argv, env, stdio.child, setsid=setsid)
    except OSError as err:
        status = EXIT_SERVICE_NOT_FOUND if isinstance(err, FileNotFoundError) else EXIT_PROBLEM
        message = f"failed to execute {os.fsdecode(path)}: {err.strerror}"
        return _exit_with(status, message, stdio, ctx)
    return _result(pid, stdio, own_session=setsid)


def _own_user(ctx: SpawnContext) -> str:
    if ctx.own_user is not None:
        return ctx.own_user
    return pwd.getpwuid(os.geteuid()).pw_name


def _base_env(ctx: SpawnContext) -> Mapping[bytes, bytes]:
    return ctx.env.environb


def _user_problem(user: str, ctx: SpawnContext) -> str | None:
    """Why the call cannot run as `user` in this context, or None."""
    if ctx.executor is Executor.USER_AGENT:
        own = _own_user(ctx)
        if user != own:
            return f"requested user {user}, but qrexec-agent is running as user {own}"
    elif ctx.executor is Executor.ROOT_AGENT:
        entry = _passwd(user)
        if entry is None or not entry.pw_name or not entry.pw_dir:
            return f"user {user} does not exist"
    return None


def _passwd(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user)
    except (KeyError, ValueError):
        return None


def _login_variables(entry: pwd.struct_passwd) -> dict[bytes, bytes]:
    return {
        b"HOME": os.fsencode(entry.pw_dir),
        b"SHELL": os.fsencode(entry.pw_shell or "/bin/sh"),
        b"USER": os.fsencode(entry.pw_name),
        b"LOGNAME": os.fsencode(entry.pw_name),
    }


def _switch_user_prefix(entry: pwd.struct_passwd, ctx: SpawnContext) -> list[bytes]:
    """argv prefix that runs the rest as `entry`'s user with its groups (empty: already so)."""
    if entry.pw_uid == os.geteuid() and entry.pw_gid == os.getegid():
        return []
    setpriv = find_program(ctx.setpriv, ctx.env.path) or ctx.setpriv
    return [
        os.fsencode(setpriv),
        b"--reuid=%d" % entry.pw_uid,
        b"--regid=%d" % entry.pw_gid,
        b"--init-groups",
        b"--",
    ]


def _with_stdio(ctx: SpawnContext, tag: str | None,
                then: Callable[[_Stdio], Result]) -> Prepared:
    """`then`, given the child's streams: opened now, or at the start for just-exec, whose
    stderr writer is a `logger` process (nothing runs before the start)."""
    stdio = None if ctx.just_exec else _open_stdio(ctx, tag)
    return Prepared(lambda: then(stdio if stdio is not None else _open_stdio(ctx, tag)), stdio)


def _prepare_exit(status: int, message: str, ctx: SpawnContext, tag: str | None) -> Prepared:
    return _with_stdio(ctx, tag, lambda stdio: _exit_with(status, message, stdio, ctx))


def _prepare_service(path: bytes, call: ServiceCall, user: str, ctx: SpawnContext) -> Prepared:
    tag = log_tag(call)
    if not valid_token_count(call):
        return _prepare_exit(EXIT_PROBLEM, "invalid number of arguments", ctx, tag)
    problem = _user_problem(user, ctx)
    if problem is not None:
        return _prepare_exit(EXIT_PROBLEM, problem, ctx, tag)
    argv = service_argv(path, call)
    if ctx.executor is not Executor.ROOT_AGENT:
        env = service_environment(_base_env(ctx), call, ctx.handler_pid)
        return _with_stdio(ctx, tag, lambda stdio: _exec(path, argv, env, stdio, ctx))
    entry = _passwd(user)
    assert entry is not None
    env = service_environment(_base_env(ctx), call, ctx.handler_pid, _login_variables(entry))
    full = _switch_user_prefix(entry, ctx) + login_wrapper_argv(argv, call)
    return _with_stdio(ctx, tag,
                       lambda stdio: _exec(full[0], full, env, stdio, ctx, setsid=True))


def _enter_home(entry: pwd.struct_passwd, ctx: SpawnContext) -> None:
    """Start in the user's home; only inside a per-call handler, whose cwd is its own."""
    if ctx.handler_pid != os.getpid():
        return
    try:
        os.chdir(entry.pw_dir)
    except OSError as err:
        ctx.log(f"cannot enter home directory {entry.pw_dir}: {err.strerror}")


def _prepare_shell_command(text: bytes, user: str, ctx: SpawnContext) -> Prepared:
    problem = _user_problem(user, ctx)
    if problem is not None:
        return _prepare_exit(EXIT_PROBLEM, problem, ctx, None)
    env = inherited_environment(_base_env(ctx))
    env.update(ctx.shell_env)
    if ctx.handler_pid is not None:
        env[b"QREXEC_AGENT_PID"] = str(ctx.handler_pid).encode()
    if ctx.executor is Executor.ROOT_AGENT:
        # The user's login shell (argv0 "-shell") with its groups and home. Not through
        # su(1): without PAM it adds nothing but ~100 ms of PAM start-up to every call.
        entry = _passwd(user)
        assert entry is not None
        env.update(_login_variables(entry))
        shell = os.fsencode(entry.pw_shell or "/bin/sh")
        prefix = _switch_user_prefix(entry, ctx)
        if prefix:
            # setpriv cannot set argv0, so the shell is asked for a login shell with -l
            argv = [*prefix, shell, b"-l", b"-c", text]
            path = argv[0]
        else:
            argv = [b"-" + os.path.basename(shell), b"-c", text]
            path = shell

        def start_login(stdio: _Stdio) -> Result:
            _enter_home(entry, ctx)
            return _exec(path, argv, env, stdio, ctx, setsid=True)

        return _with_stdio(ctx, None, start_login)
    if ctx.executor is Executor.FORK_SERVER:
        shell = env.get(b"SHELL") or b"/bin/sh"
    else:
        shell = b"/bin/bash" if ctx.executor is Executor.DOM0 else b"/bin/sh"
    argv = [os.path.basename(shell), b"-c", text]
    return _with_stdio(ctx, None, lambda stdio: _exec(shell, argv, env, stdio, ctx))
