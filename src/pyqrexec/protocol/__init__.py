"""Sans-IO qrexec protocol core: codecs and state machines that never touch a socket.

Nothing in this package imports socket, asyncio, subprocess or reads the environment; the
programs feed it bytes and act on what it returns (see tests/unit/test_purity.py).
"""
