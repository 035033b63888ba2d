"""`x-request-id`: one id per request, kept when the caller sent a sane one, else generated.

Apart from `propagation` on purpose: a sidecar with tracing disabled still gives every request
an id (access log, error bodies, the app's headers), and must not import OpenTelemetry for it.
"""

from __future__ import annotations

import random
import re
from typing import Final

REQUEST_ID_HEADER: Final = b"x-request-id"
# A kept x-request-id is logged and echoed in error bodies: bound it and keep it to visible ASCII.
MAX_REQUEST_ID_LEN: Final = 128
_REQUEST_ID_RE: Final = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID_LEN)


def new_request_id() -> bytes:
    """32 hex digits. Unique, not secret: `random` (what OTel uses for span ids) beats os.urandom here."""
    return b"%032x" % random.getrandbits(128)


def valid_request_id(value: bytes) -> bool:
    """1–128 visible ASCII characters: safe to log, to echo in a header and in an error body."""
    return _REQUEST_ID_RE.fullmatch(value) is not None


def find_request_id(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bool]:
    """(the request's valid x-request-id or None, whether an x-request-id field is present at all).

    One pass over the raw header list, any name case; the last field wins, as in `extract`.
    """
    found: bytes | None = None
    present = False
    for name, value in headers:
        if len(name) == 12 and name.lower() == REQUEST_ID_HEADER:
            present = True
            found = value
    if found is not None and not valid_request_id(found):
        found = None
    return found, present
