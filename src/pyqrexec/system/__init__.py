"""The operating-system edge every program shares: forking, parent death, inotify,
logging, how our own programs are started, and the settings read from the environment
(docs/architecture.md#layers)."""
