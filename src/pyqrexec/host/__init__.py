"""The OS edge of dom0: the qubesd sockets and other host services."""
