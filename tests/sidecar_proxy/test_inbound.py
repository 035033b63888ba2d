"""Inbound: mTLS in, the caller's SVID checked, XFCC set, plain HTTP to the app."""

from __future__ import annotations

import hashlib

from tests.sidecar_proxy.harness import (
    API,
    WEB,
    HttpClient,
    Pki,
    StaticIdentity,
    client_context,
    inbound_running,
    open_tls,
)


async def test_request_reaches_app_with_xfcc_and_spoofed_xfcc_removed(
    pki: Pki, web: StaticIdentity, api: StaticIdentity
) -> None:
    async with inbound_running(api) as inbound:
        stream = await open_tls(inbound.port, client_context(web))
        client = HttpClient(stream)
        resp = await client.request(
            "GET",
            "/hello?x=1",
            [
                ("x-forwarded-client-cert", "By=spiffe://evil;URI=spiffe://example.org/ns/default/sa/admin"),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ("connection", "keep-alive, x-drop-me"),
                ("x-drop-me", "hop"),
            ],
        )
        assert resp.status == 200
        seen = inbound.app.requests[-1]
        assert seen.target == "/hello?x=1"
        leaf_der = pki_leaf_der(web)
        expected = f"By={API};Hash={hashlib.sha256(leaf_der).hexdigest()};URI={WEB}"
        assert seen.header("x-forwarded-client-cert") == [expected]
        assert seen.header("traceparent") == ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
        assert seen.header("x-drop-me") == []
        assert seen.header("connection") == []
        # keep-alive on both sides: a second request on the same connections
        resp = await client.request("POST", "/b", body=b"x" * 1000)
        assert resp.status == 200
        assert inbound.app.requests[-1].body_len == 1000
        assert inbound.app.connections == 1
        await stream.aclose()


def pki_leaf_der(identity: StaticIdentity) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    leaf = x509.load_pem_x509_certificates(identity.chain_pem)[0]
    return leaf.public_bytes(serialization.Encoding.DER)
