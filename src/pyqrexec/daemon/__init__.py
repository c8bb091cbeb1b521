"""dom0's per-VM daemon: control channel, client socket, port table, call requests."""
