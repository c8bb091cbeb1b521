"""pyqrexec: Qubes OS qrexec re-implemented in Python, byte-compatible with upstream."""

__version__ = "0.1.0"
