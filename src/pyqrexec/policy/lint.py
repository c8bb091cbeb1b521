"""Line-by-line policy checks of qubes-policy-lint (docs/reference/cli.md#qubes-policy-lint), shared
with qubes-policy-editor.

Includes are not followed; each line is parsed on its own (`legacy`: as a legacy line, the
content of an `!include-service * *` file).
"""

from __future__ import annotations

from .errors import PolicySyntaxError
from .legacy import translate_line
from .parser import parse_line, split_lines

__all__ = ["lint"]


def lint(path: str, data: bytes, legacy: bool, show_line: bool) -> list[str]:
    """The error lines (`PATH:LINE: error: MESSAGE`) for one file's content."""
    errors = []
    try:
        lines = split_lines(data, path)
    except PolicySyntaxError as err:
        return [f"{path}:{err.line}: error: {err.msg}"]
    for lineno, text in enumerate(lines, 1):
        try:
            if legacy:
                translate_line(text, path, lineno, "*", "*")
            else:
                parse_line(text, path, lineno)
        except PolicySyntaxError as err:
            suffix = f": {text.strip()}" if show_line else ""
            errors.append(f"{path}:{lineno}: error: {err.msg}{suffix}")
    return errors
