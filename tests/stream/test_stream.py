"""The configuration stream end to end: a real control plane on loopback, real SVIDs, real mTLS
websockets, in-process sidecar stream clients. Each test states what a sidecar (or operator)
would observe."""

from __future__ import annotations

from datetime import timedelta

import trio
from trio_websocket import open_websocket_url

from tests.stream.conftest import API, POLICY, WEB, Mesh, commit, eventually, wait_for
from trustmesh.ca import CertificateAuthority
from trustmesh.control import stream_protocol as sp
from trustmesh.control.join_client import Svid, client_context
from trustmesh.identity import SpiffeId
from trustmesh.sidecar.stream_client import StreamClient


def addresses(client: StreamClient, service: str) -> list[tuple[str, str]]:
    return [(e.address, e.health) for e in client.endpoints.get(service, ())]


async def test_snapshot_on_connect_carries_bundle_policy_and_service(mesh: Mesh) -> None:
    svid = await mesh.svid(WEB, "web")
    revisions = []
    traffic = []
    bundles = []
    client = mesh.client(
        svid,
        calls=["api"],
        on_policy=revisions.append,
        on_traffic=traffic.append,
        on_bundle=bundles.append,
    )
    await mesh.nursery.start(client.run)
    assert client.snapshots == 1 and client.service == "web"
    assert client.revision is not None and [r.id for r in revisions] == [client.revision]
    assert traffic == revisions  # the same compiled revision feeds the traffic settings
    assert bundles and b"BEGIN CERTIFICATE" in bundles[0]
    assert client.endpoints == {"api": ()}
    await eventually(lambda: [c.version_acked for c in mesh.hub.connections()] == [client.version])


async def test_endpoints_appear_and_leave_on_deregister(mesh: Mesh) -> None:
    web = mesh.client(await mesh.svid(WEB, "web"), calls=["api"])
    await mesh.nursery.start(web.run)
    api = mesh.client(await mesh.svid(API, "api"), advertise=["127.0.0.1:9001", "[::1]:9001"])
    await mesh.nursery.start(api.run)
    await wait_for(
        lambda: web.changed,
        lambda: addresses(web, "api") == [("127.0.0.1:9001", "healthy"), ("[::1]:9001", "healthy")],
    )
    assert {e.spiffe_id for e in web.endpoints["api"]} == {API}
    await api.stop()
    await wait_for(lambda: web.changed, lambda: addresses(web, "api") == [])


async def test_a_vanished_sidecar_is_disconnected_then_expired_after_the_grace_period(mesh: Mesh) -> None:
    web = mesh.client(await mesh.svid(WEB, "web"), calls=["api"])
    await mesh.nursery.start(web.run)
    api = mesh.client(await mesh.svid(API, "api"), advertise=["127.0.0.1:9001"])
    api_scope = trio.CancelScope()
    mesh.nursery.start_soon(_run_in, api, api_scope)
    await wait_for(lambda: web.changed, lambda: addresses(web, "api") == [("127.0.0.1:9001", "healthy")])
    # Killed: the stream ends without a deregister (the cancel closes the socket).
    api_scope.cancel()
    await wait_for(lambda: web.changed, lambda: addresses(web, "api") == [("127.0.0.1:9001", "disconnected")])
    # Within the grace period a sweep keeps it; past it, it goes.
    mesh.clock.advance(timedelta(seconds=14))
    assert await mesh.hub.registry.sweep_once() == []
    mesh.clock.advance(timedelta(seconds=2))
    await eventually(lambda: addresses(web, "api") == [])


async def test_a_silent_sidecar_is_noticed_by_missed_heartbeats(mesh: Mesh) -> None:
    """A raw client that registers and then says nothing (no heartbeats): disconnected within 3 intervals."""
    web = mesh.client(await mesh.svid(WEB, "web"), calls=["api"])
    await mesh.nursery.start(web.run)
    api = await mesh.svid(API, "api")
    async with raw_stream(mesh, api) as ws:
        await ws.send_message(sp.encode(sp.Register(API, ("127.0.0.1:9002",))))
        await wait_for(lambda: web.changed, lambda: addresses(web, "api") == [("127.0.0.1:9002", "healthy")])
        # Read nothing, send nothing: the control plane gives up on us.
        await wait_for(
            lambda: web.changed, lambda: addresses(web, "api") == [("127.0.0.1:9002", "disconnected")]
        )


async def test_register_for_a_foreign_service_or_identity_is_refused(mesh: Mesh) -> None:
    web_svid = await mesh.svid(WEB, "web")
    await mesh.svid(API, "api")
    # The web workload claims to be an endpoint of api: refused, and api gets no endpoint.
    rogue = mesh.client(web_svid, service="api", advertise=["127.0.0.1:6666"])
    async with trio.open_nursery() as n:
        n.start_soon(rogue.run)
        await wait_for(lambda: rogue.changed, lambda: rogue.last_error is not None)
        n.cancel_scope.cancel()
    assert rogue.last_error is not None and rogue.last_error.code == "registration_refused"
    assert "not bound" in rogue.last_error.detail and rogue.snapshots == 0
    assert mesh.hub.registry.endpoints("api") == ()
    # Someone else's SPIFFE ID in the register message: refused too.
    async with raw_stream(mesh, web_svid) as ws:
        await ws.send_message(sp.encode(sp.Register(API, ("127.0.0.1:6666",), service="web")))
        reply = sp.decode(await ws.get_message())
        assert isinstance(reply, sp.Error) and reply.code == "registration_refused"
        assert "own SPIFFE ID" in reply.detail
    assert mesh.hub.registry.endpoints("web") == ()


async def test_an_svid_of_another_trust_domain_is_refused(mesh: Mesh, tmp_path: object) -> None:
    from pathlib import Path

    from trustmesh.control.join_client import new_key_and_csr

    other = CertificateAuthority.init(Path(str(tmp_path)) / "other", "other.org", clock=mesh.clock)
    key, csr = new_key_and_csr()
    issued = other.sign_x509_svid(csr, SpiffeId.parse("spiffe://other.org/api"))
    ours = await mesh.svid(WEB, "web")
    foreign = Svid("spiffe://other.org/api", issued.chain_pem(), key, ours.bundle_pem, issued.not_after)
    client = mesh.client(foreign, calls=["api"])
    async with trio.open_nursery() as n:
        await n.start(client.run)  # started after a failed round, never synced
        n.cancel_scope.cancel()
    assert client.snapshots == 0 and client.version is None
    assert mesh.hub.connections() == []


async def test_a_policy_commit_is_pushed_and_acked(mesh: Mesh) -> None:
    web = mesh.client(await mesh.svid(WEB, "web"), calls=["api"])
    await mesh.nursery.start(web.run)
    first = web.revision
    assert mesh.policy is not None
    new = commit(mesh.repo, "policy.yaml", POLICY.replace('["GET"]', '["GET", "HEAD"]'), "allow HEAD")
    await mesh.policy.poll_once()
    await wait_for(lambda: web.changed, lambda: web.revision == new)
    assert first != new and web.snapshots == 1  # an update, not a resync
    await eventually(lambda: [c.version_acked for c in mesh.hub.connections()] == [mesh.hub.version])
    [conn] = mesh.hub.connections()
    assert conn.version_sent == conn.version_acked and conn.last_push_latency_s is not None


async def test_garbage_from_a_sidecar_is_ignored(mesh: Mesh) -> None:
    svid = await mesh.svid(WEB, "web")
    async with raw_stream(mesh, svid) as ws:
        for junk in ("not json", "[]", '{"type": "launch", "v": 1}', '{"type": "ack", "v": 7}', "{}"):
            await ws.send_message(junk)
        await ws.send_message(sp.encode(sp.Register(WEB, calls=("api",))))
        snapshot = sp.decode(await ws.get_message())
        assert isinstance(snapshot, sp.Snapshot) and snapshot.service == "web"
        await ws.send_message('{"type": "ack", "v": 1, "version": "seven"}')
        await ws.send_message(sp.encode(sp.Ack(snapshot.version)))
        await eventually(lambda: [c.version_acked for c in mesh.hub.connections()] == [snapshot.version])


async def test_the_client_survives_malformed_messages_from_the_control_plane(mesh: Mesh) -> None:
    """A stand-in control plane (same TLS identity) sends junk, then a valid snapshot."""
    assert mesh.cp is not None and mesh.cp.tls is not None
    svid = await mesh.svid(WEB, "web")
    tls = mesh.cp.tls.context
    got: list[sp.Message] = []

    async def fake_control_plane(request: object) -> None:
        ws = await request.accept()  # type: ignore[attr-defined]
        got.append(sp.decode(await ws.get_message()))
        for junk in ("{", '{"type": "update", "v": 1, "version": 3}', '{"type": "snapshot", "v": 2}', "null"):
            await ws.send_message(junk)
        endpoints = {"api": (sp.Endpoint("10.1.1.1:80", API),)}
        await ws.send_message(sp.encode(sp.Snapshot(9, "web", svid.bundle_pem.decode(), None, endpoints)))
        got.append(sp.decode(await ws.get_message()))
        await trio.sleep_forever()

    from trio_websocket import serve_websocket

    async with trio.open_nursery() as n:
        server = await n.start(serve_websocket, fake_control_plane, "127.0.0.1", 0, tls)
        port = server.port
        client = mesh.client(svid, urls=[f"https://127.0.0.1:{port}"], calls=["api"])
        await n.start(client.run)
        await eventually(lambda: len(got) == 2)
        assert isinstance(got[0], sp.Register) and got[1] == sp.Ack(9)
        assert addresses(client, "api") == [("10.1.1.1:80", "healthy")]
        await client.stop()
        n.cancel_scope.cancel()


async def test_control_plane_restart_client_keeps_state_reconnects_and_resyncs(mesh: Mesh) -> None:
    web = mesh.client(await mesh.svid(WEB, "web"), calls=["api"])
    await mesh.nursery.start(web.run)
    api = mesh.client(await mesh.svid(API, "api"), advertise=["127.0.0.1:9001"])
    await mesh.nursery.start(api.run)
    await wait_for(lambda: web.changed, lambda: addresses(web, "api") == [("127.0.0.1:9001", "healthy")])
    revision = web.revision
    assert mesh.cp is not None
    mesh.cp.stop()
    await wait_for(lambda: web.changed, lambda: web.connected_url is None)
    # Disconnected: still serving from the last snapshot.
    assert addresses(web, "api") == [("127.0.0.1:9001", "healthy")] and web.revision == revision
    await mesh.start()  # same port, same state dir and store
    await wait_for(lambda: web.changed, lambda: web.snapshots == 2 and api.snapshots == 2)
    await wait_for(lambda: web.changed, lambda: addresses(web, "api") == [("127.0.0.1:9001", "healthy")])
    assert web.revision == revision
    assert sorted(c.service for c in mesh.hub.connections()) == ["api", "web"]


async def test_fails_over_to_the_next_control_plane_url(mesh: Mesh) -> None:
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    dead_url = f"https://127.0.0.1:{dead.getsockname()[1]}"
    web = mesh.client(await mesh.svid(WEB, "web"), urls=[dead_url, mesh.url], calls=["api"])
    await mesh.nursery.start(web.run)
    assert web.snapshots == 1
    dead.close()


async def _run_in(client: StreamClient, scope: trio.CancelScope) -> None:
    with scope:
        await client.run()


def raw_stream(mesh: Mesh, svid: Svid):  # type: ignore[no-untyped-def]
    return open_websocket_url(
        f"wss://127.0.0.1:{mesh.port}{sp.STREAM_PATH}", ssl_context=client_context(svid.bundle_pem, svid)
    )
