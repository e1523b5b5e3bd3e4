"""The one exception type for bad user input.

Anything the user can fix (a missing file, a corrupt image, mismatched sizes, a camera that sees
nothing) raises `InputError` with one line naming the file and the problem; the CLI prints that line
and exits with code 2. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input that the user can fix; the message is one line naming the file and the problem."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        text = f"{self.path}: {message}" if self.path is not None else message
        super().__init__(" ".join(text.split()))  # always a single line
