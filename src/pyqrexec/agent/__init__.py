"""The VM side: qrexec-agent's control loop and its per-call handlers."""
