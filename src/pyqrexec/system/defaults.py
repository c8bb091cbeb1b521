"""Every default path the programs share, in one place: the values the environment variables
of docs/reference/cli.md#common-environment fall back to, and the fixed sockets and
directories several programs must agree on.

No imports at all: the pure policy engine takes its directory defaults from here, and the
two per-call clients load it on their start-up path.
"""

from __future__ import annotations

__all__ = [
    "SERVICE_PATH",
    "MULTIPLEXER_SERVICE_PATH",
    "RPC_CONFIG_PATH",
    "VCHAN_SOCKET_DIR",
    "DAEMON_SOCKET_DIR",
    "AGENT_SOCKET",
    "FORK_SERVER_SOCKET_TEMPLATE",
    "POLICY_SOCKET",
    "POLICY_AGENT_SOCKET",
    "POLICY_DIRS",
    "LEGACY_POLICY_DIR",
    "QUBESD_SOCKET",
    "QUBESD_INTERNAL_SOCKET",
    "REMOTE_DIR",
]

#: `QREXEC_SERVICE_PATH`: service directories, searched in order
SERVICE_PATH = "/run/qubes-rpc:/usr/local/etc/qubes-rpc:/etc/qubes-rpc"
#: `QREXEC_SERVICE_PATH` as qubes-rpc-multiplexer reads it: upstream's multiplexer is an older
#: shell script whose default never gained `/run/qubes-rpc`; scripts that call it rely on that
#: (docs/reference/services.md#qubes-rpc-multiplexer)
MULTIPLEXER_SERVICE_PATH = "/usr/local/etc/qubes-rpc:/etc/qubes-rpc"
#: `QUBES_RPC_CONFIG_PATH`: rpc-config directories
RPC_CONFIG_PATH = "/run/qubes/rpc-config:/usr/local/etc/qubes/rpc-config:/etc/qubes/rpc-config"
#: `VCHAN_SOCKET_DIR`: where the `vchan.*.sock` files are
VCHAN_SOCKET_DIR = "/var/run/vchan"
#: qrexec-daemon's client sockets (`--socket-dir`)
DAEMON_SOCKET_DIR = "/var/run/qubes"
#: qrexec-agent's trigger socket (`--agent-socket`)
AGENT_SOCKET = "/var/run/qubes/qrexec-agent"
#: a user's fork server socket, `%s` the user name (`--fork-server-socket`)
FORK_SERVER_SOCKET_TEMPLATE = "/var/run/qubes/qrexec-server.%s.sock"
#: `QREXEC_POLICY_SOCKET`: the policy daemon's socket
POLICY_SOCKET = "/run/qubes/policy.sock"
#: the policy agent's socket (policy.Ask / policy.Notify)
POLICY_AGENT_SOCKET = "/var/run/qubes/policy-agent.sock"
#: the policy directories, the persistent one last (`QREXEC_POLICY_DIR` replaces both)
POLICY_DIRS = ("/run/qubes/policy.d", "/etc/qubes/policy.d")
#: `QREXEC_LEGACY_POLICY_DIR`: the legacy per-service policy files
LEGACY_POLICY_DIR = "/etc/qubes-rpc/policy"
#: `QUBESD_SOCKET`, `QUBESD_INTERNAL_SOCKET`
QUBESD_SOCKET = "/run/qubesd.sock"
QUBESD_INTERNAL_SOCKET = "/run/qubesd.internal.sock"
#: `PYQREXEC_REMOTE_DIR` (ext): the RemoteVM entries a relaying qube reads (docs/remote.md)
REMOTE_DIR = "/run/qubes/remote"
