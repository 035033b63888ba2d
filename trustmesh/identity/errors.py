"""The one error type SVID validation raises, shared by the X.509 and JWT validators."""

from __future__ import annotations


class SvidError(ValueError):
    """An SVID that must not be trusted.

    `reason` is a short machine-readable code (`expired`, `untrusted_chain`, `leaf_is_ca`,
    `uri_san_count`, `foreign_trust_domain`, `alg_not_allowed`, ...) for metrics, logs and
    API error bodies; the message says, for a person, what exactly broke.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message
