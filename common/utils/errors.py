"""One exception type for every user-facing failure.

Commands catch `MammoError` at the top and print its message as one line
(no traceback): bad input must never look like a crash.
"""

from __future__ import annotations

from pathlib import Path


class MammoError(Exception):
    """A problem the user can fix (bad file, bad config, unreachable server)."""


class DataError(MammoError):
    """A data file is unreadable or not what it claims to be.

    The message always names the file and the cause, on one line.
    """

    def __init__(self, path: str | Path | None, cause: str) -> None:
        self.path = None if path is None else str(path)
        self.cause = " ".join(str(cause).split())  # keep it on one line
        super().__init__(f"{self.path}: {self.cause}" if self.path else self.cause)


class ConfigError(MammoError):
    """A configuration value is missing, unknown or of the wrong type."""
