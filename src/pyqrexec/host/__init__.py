"""The host layer upstream lacks: domains as process trees on one Linux machine."""
