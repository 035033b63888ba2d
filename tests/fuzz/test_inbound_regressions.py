"""Inputs the inbound HTTP fuzzing found, as regression tests (502s, or a hidden request reaching the app)."""

from __future__ import annotations

import pytest

from tests.sidecar_proxy.harness import StaticIdentity, client_context, inbound_running, raw_exchange

FOUND = {
    # Forwarded with both fields; the app (h11, strict as RFC 9112 3.2 asks) refused it: 502.
    "two host fields": b"GET / HTTP/1.1\r\nHost: svc\r\nHost: svc\r\n\r\n",
    "two different host fields": b"GET / HTTP/1.1\r\nHost: api\r\nhost: admin.internal\r\n\r\n",
    # A mutation of "Host" into another name: HTTP/1.1 without Host, forwarded, refused: 502.
    "no host field": b"GET / HTTP/1.1\r\nHxst: svc\r\n\r\n",
    # TE.TE obfuscation: llhttp framed these as chunked and the request hidden in the body
    # reached the app as a second request; a proxy in front reading TE differently would not.
    "xchunked then chunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n"
    ),
    "gzip, chunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n"
        b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n"
    ),
    "chunked twice": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n"
    ),
}


@pytest.mark.parametrize("case", sorted(FOUND))
async def test_found_by_fuzzing_is_a_400_and_never_forwarded(
    web: StaticIdentity, api: StaticIdentity, case: str
) -> None:
    async with inbound_running(api) as inbound:
        got = await raw_exchange(inbound.port, FOUND[case], client_context(web))
        assert got.startswith(b"HTTP/1.1 400 "), got[:200]
        assert b"x-trustmesh-error: bad-request" in got
        assert inbound.app.requests == []
        assert inbound.app.raw_bytes == 0
