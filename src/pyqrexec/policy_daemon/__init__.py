"""The I/O side of the policy engine: system info from qubesd, reloads, dialogs, sockets.

Decisions themselves are made by the pure `pyqrexec.policy` package.
"""
