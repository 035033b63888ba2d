"""The one way a command reports a user-facing failure: raise CliError, main prints one line."""

from __future__ import annotations


class CliError(Exception):
    """A failure the user can act on; printed as one line on stderr, exit `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def innermost(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio nurseries wrap errors).

    A failure in a command's trio nursery arrives as an ExceptionGroup of one; the user
    should see the failure, not the wrapping.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
