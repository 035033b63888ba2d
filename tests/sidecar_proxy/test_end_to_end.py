"""App → outbound sidecar → inbound sidecar → app, in one process, real TLS on loopback."""

from __future__ import annotations

import hashlib

from tests.sidecar_proxy.harness import (
    API,
    OTHER,
    WEB,
    HttpClient,
    Pki,
    StaticIdentity,
    endpoint,
    inbound_running,
    open_plain,
    outbound_running,
)


async def test_request_crosses_both_sidecars_with_identity_and_one_handshake(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    async with (
        inbound_running(api) as inbound,
        outbound_running(web, [endpoint(inbound.port, API)]) as outbound,
    ):
        client = HttpClient(await open_plain(outbound.port))
        for i in range(20):
            resp = await client.request(
                "POST",
                f"/orders/{i}",
                [
                    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                    ("x-forwarded-client-cert", "By=x;URI=spiffe://example.org/ns/default/sa/admin"),
                ],
                body=b"payload %d" % i,
            )
            assert resp.status == 200
            seen = inbound.app.requests[-1]
            assert seen.target == f"/orders/{i}"
            assert seen.body_sha256 == hashlib.sha256(b"payload %d" % i).hexdigest()
            (xfcc,) = seen.header("x-forwarded-client-cert")
            assert xfcc.startswith(f"By={API};Hash=") and xfcc.endswith(f";URI={WEB}")
            assert seen.header("traceparent") == ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
        # a handshake per request is a defect: 20 requests, one mTLS connection, one app connection
        assert outbound.counters.tls_handshakes_out == 1
        assert inbound.counters.tls_handshakes_in == 1
        assert inbound.app.connections == 1
        await client.stream.aclose()


async def test_secure_naming_refuses_another_services_svid(pki: Pki, web: StaticIdentity) -> None:
    other = pki.identity(OTHER)  # a valid SVID of our trust domain, but not api's
    async with (
        inbound_running(other) as inbound,
        outbound_running(web, [endpoint(inbound.port, API)]) as outbound,
    ):
        client = HttpClient(await open_plain(outbound.port))
        resp = await client.request("GET", "/secret")
        assert resp.status == 502
        assert resp.header("x-trustmesh-error") == "secure-naming"
        assert inbound.app.requests == []
        assert inbound.app.raw_bytes == 0
        await client.stream.aclose()


async def test_connect_refused_and_no_endpoints_have_their_own_codes(web: StaticIdentity) -> None:
    from tests.sidecar_proxy.harness import free_port

    async with outbound_running(web, [endpoint(free_port(), API)]) as outbound:
        client = HttpClient(await open_plain(outbound.port))
        resp = await client.request("GET", "/")
        assert resp.status == 503
        assert resp.header("x-trustmesh-error") == "connect-failed"
        await client.stream.aclose()
    async with outbound_running(web, [endpoint(free_port(), API, service="nope")]) as outbound:
        client = HttpClient(await open_plain(outbound.port))
        resp = await client.request("GET", "/")
        assert resp.status == 503
        assert resp.header("x-trustmesh-error") == "no-endpoints"
        await client.stream.aclose()
