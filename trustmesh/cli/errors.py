"""The one way a command reports a user-facing failure: raise CliError, main prints one line."""

from __future__ import annotations


class CliError(Exception):
    """A failure the user can act on; printed as one line on stderr, exit `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
