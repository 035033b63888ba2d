"""The one shape every API failure takes: HTTP status plus JSON `{"error", "detail"}`."""

from __future__ import annotations


class ApiError(Exception):
    """A refusal the caller caused and can act on (4xx). Never used for our own bugs.

    `error` is a short stable code for programs; `detail` is a sentence for people and
    must never contain a secret.
    """

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


# What the caller learns about any token failure; the exact reason goes to the server log
# only, so that probing cannot tell an unknown token from a used or expired one.
TOKEN_REJECTED_DETAIL = "join token invalid, expired or already used"
