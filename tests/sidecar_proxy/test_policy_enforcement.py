"""Policy enforced in the inbound proxy, end to end through both proxies on real TLS.

web's outbound → api's inbound (PolicyAuthorizer) → echo app. What the app saw is the
proof: a denied request never reaches it.
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from tests.sidecar_proxy.harness import (
    API,
    OTHER,
    WEB,
    HttpClient,
    Pki,
    StaticIdentity,
    client_context,
    endpoint,
    inbound_running,
    open_plain,
    outbound_running,
    raw_exchange,
)
from trustmesh.policy.engine import Decision
from trustmesh.policy.loader import load_revision
from trustmesh.policy.model import Revision
from trustmesh.sidecar.inbound.authorize_policy import PolicyAuthorizer
from trustmesh.sidecar.policy_follower import PolicyFollower


def revision(rev_id: str, methods: list[str], *, deny_admin: bool = False) -> Revision:
    doc = f"""\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: web-reads-api
spec:
  selector:
    spiffeIds: ["{API}"]
  action: ALLOW
  rules:
    - from:
        spiffeIds: ["{WEB}"]
      to:
        methods: {json.dumps(methods)}
        paths: ["/items", "/items/*", "/admin"]
"""
    if deny_admin:
        doc += """---
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: nobody-admin
spec:
  action: DENY
  rules:
    - to:
        paths: ["/admin"]
"""
    loaded = load_revision({"policy.yaml": doc.encode()}, revision_id=rev_id)
    assert isinstance(loaded, Revision), loaded
    return loaded


async def test_default_deny_before_any_policy(web: StaticIdentity, api: StaticIdentity) -> None:
    authorizer = PolicyAuthorizer(API)
    async with (
        inbound_running(api, authorizer=authorizer) as inbound,
        outbound_running(web, [endpoint(inbound.port, API)]) as outbound,
    ):
        client = HttpClient(await open_plain(outbound.port))
        resp = await client.request("GET", "/items")
        assert resp.status == 403
        assert resp.header("x-trustmesh-error") == "forbidden"
        request_id = resp.header("x-request-id")
        assert request_id and request_id.encode() in resp.body
        assert b"policy" not in resp.body and b"rule" not in resp.body  # no policy internals
        assert inbound.app.requests == []
        await client.stream.aclose()


async def test_allow_deny_and_a_live_policy_change_on_one_keep_alive_connection(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    decisions: list[Decision] = []
    authorizer = PolicyAuthorizer(API, on_decision=decisions.append)
    authorizer.update(revision("rev-1", ["GET"], deny_admin=True))
    async with (
        inbound_running(api, authorizer=authorizer) as inbound,
        outbound_running(web, [endpoint(inbound.port, API)]) as outbound,
    ):
        client = HttpClient(await open_plain(outbound.port))
        assert (await client.request("GET", "/items/7")).status == 200
        assert (await client.request("DELETE", "/items/7")).status == 403
        # DENY wins over the ALLOW that also names /admin
        assert (await client.request("GET", "/admin")).status == 403
        assert decisions[-1].policy == "nobody-admin" and decisions[-1].reason == "deny-rule"
        # paths are normalised before matching: these cannot slip past the DENY on /admin
        for sneaky in ("/items/../admin", "/%61dmin", "//admin", "/items/%2e%2e/admin"):
            assert (await client.request("GET", sneaky)).status == 403, sneaky
        resp = await client.request("GET", "/items%2F..%2Fadmin")
        assert resp.status == 400 and resp.header("x-trustmesh-error") == "ambiguous-path"
        assert [r.target for r in inbound.app.requests] == ["/items/7"]

        # A new revision applies to the next request on the same kept-alive connection.
        client = HttpClient(await open_plain(outbound.port))
        assert (await client.request("GET", "/items")).status == 200
        authorizer.update(revision("rev-2", ["GET", "DELETE"]))
        assert (await client.request("DELETE", "/items/7")).status == 200
        authorizer.update(revision("rev-3", ["HEAD"]))
        assert (await client.request("GET", "/items")).status == 403
        assert decisions[-1].revision == "rev-3"
        assert outbound.counters.tls_handshakes_out == 1  # no connection was dropped for it
        await client.stream.aclose()


async def test_a_caller_no_rule_names_is_denied(pki: Pki, api: StaticIdentity) -> None:
    other = pki.identity(OTHER)
    authorizer = PolicyAuthorizer(API)
    authorizer.update(revision("rev-1", ["GET"]))
    async with inbound_running(api, authorizer=authorizer) as inbound:
        request = b"GET /items HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n"
        raw = await raw_exchange(inbound.port, request, client_context(other))
        assert raw.startswith(b"HTTP/1.1 403")
        assert inbound.app.requests == []


async def test_denied_tcp_connection_is_closed_after_the_handshake(
    pki: Pki, web: StaticIdentity, api: StaticIdentity
) -> None:
    authorizer = PolicyAuthorizer(API)  # no policy: TCP denied too
    async with inbound_running(api, protocol="tcp", authorizer=authorizer) as inbound:
        got = await raw_exchange(inbound.port, b"hello", client_context(web))
        assert got == b""
        assert inbound.app.connections == 0


async def test_follower_applies_a_policy_directory_and_keeps_the_last_good(
    tmp_path: Path, api: StaticIdentity
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    text = f"""\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata: {{name: web-reads-api}}
spec:
  selector: {{spiffeIds: ["{API}"]}}
  action: ALLOW
  rules: [{{from: {{spiffeIds: ["{WEB}"]}}}}]
"""
    (policies / "policy.yaml").write_text(text)
    authorizer = PolicyAuthorizer(API)
    follower = PolicyFollower(authorizer, policy_dir=policies)
    assert await follower.poll_once()
    first = authorizer.revision
    assert authorizer.authorize_http(WEB, "GET", "/x", 9001).allowed
    (policies / "policy.yaml").write_text(text.replace("ALLOW", "PERMIT"))
    with structlog.testing.capture_logs() as logs:
        assert not await follower.poll_once()
    assert authorizer.revision == first
    assert any(e["event"] == "policy_revision_refused" for e in logs)
    assert authorizer.authorize_http(WEB, "GET", "/x", 9001).allowed


async def test_an_expired_identity_stops_kept_alive_connections_too(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    """Fail closed means no request at all, not only no new connection."""
    authorizer = PolicyAuthorizer(API)
    authorizer.update(revision("rev-1", ["GET"]))
    async with (
        inbound_running(api, authorizer=authorizer) as inbound,
        outbound_running(web, [endpoint(inbound.port, API)]) as outbound,
    ):
        client = HttpClient(await open_plain(outbound.port))
        assert (await client.request("GET", "/items")).status == 200
        api.is_serving = False
        try:
            resp = await client.request("GET", "/items/2")
        finally:
            api.is_serving = True
        assert resp.status == 503
        assert [r.target for r in inbound.app.requests] == ["/items"]
        await client.stream.aclose()
