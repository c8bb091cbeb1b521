"""Tools for packaging pyqrexec on a real host: man pages, completion, the systemd unit."""
