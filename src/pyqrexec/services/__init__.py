"""Service side of a call: lookup, rpc-config, environment and starting the service.

`rpcconfig`, `tcptarget` and `environment` are pure; `lookup` reads directories; `launch`,
`spawn`, `session` and `syslogcopy` start processes and open sockets. Import the module you
need: this package imports nothing itself, so a client's start-up pays only for what it uses.
"""
