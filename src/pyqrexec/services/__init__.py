"""Service side of a call: lookup, rpc-config, environment and starting the service.

`rpcconfig`, `tcptarget` and `environment` are pure; `lookup` reads directories; `launch`,
`spawn`, `session` and `syslogcopy` start processes and open sockets.
"""

from __future__ import annotations

from .lookup import find_service, load_service_config
from .rpcconfig import DEFAULT_CONFIG, RpcConfigError, ServiceConfig, parse_rpc_config
from .spawn import (
    Detached,
    Executor,
    Failed,
    SpawnContext,
    Started,
    service_config_for,
    start_command,
)

__all__ = [
    "DEFAULT_CONFIG",
    "Detached",
    "Executor",
    "Failed",
    "RpcConfigError",
    "ServiceConfig",
    "SpawnContext",
    "Started",
    "find_service",
    "load_service_config",
    "parse_rpc_config",
    "service_config_for",
    "start_command",
]
