"""dom0 and VM client programs' shared pieces."""
