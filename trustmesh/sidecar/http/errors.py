"""Responses the sidecar makes itself, each marked with a short `x-trustmesh-error` code.

The code tells an operator (and a test) which rule answered, without reading logs: a 502
from the app and a 502 from secure naming must never look alike.
"""

from __future__ import annotations

from http import HTTPStatus


class HttpError(Exception):
    """A request the sidecar answers itself; `code` goes to `x-trustmesh-error` and to the log."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


def error_response(status: int, code: str, *, close: bool, body: bytes | None = None) -> bytes:
    """A complete, short HTTP/1.1 response; the body is the code and a newline unless given."""
    payload = body if body is not None else code.encode("ascii") + b"\n"
    reason = HTTPStatus(status).phrase.encode("ascii")
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, reason),
        b"x-trustmesh-error: " + code.encode("ascii") + b"\r\n",
        b"content-type: text/plain\r\n",
        b"content-length: %d\r\n" % len(payload),
    ]
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(payload)
    return b"".join(lines)
