"""The OS edge of dom0 and the host layer upstream lacks: qubesd sockets, domains as
process trees on one Linux machine."""
