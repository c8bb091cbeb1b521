"""The qubesd socket: the client every dom0 program uses to ask for system information,
start domains and create disposables, and the server `qrexec-host` runs in qubesd's place
(docs/qrexec-host.md)."""
