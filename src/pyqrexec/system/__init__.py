"""The operating-system edge every program shares: forking, parent death, inotify,
logging, how our own programs are started, the environment object and the shared default
paths (docs/architecture.md#layers, docs/architecture.md#environment-and-logging)."""
