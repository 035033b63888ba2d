"""Spans over the wire: two sidecars' spans exported by the real OTLP exporter to the in-process receiver."""

from __future__ import annotations

import gzip
import io
import json

import httpx
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.tracing.conftest import Receiver
from trustmesh.tracing.logs import access_log
from trustmesh.tracing.otlp_receiver import StoredSpan
from trustmesh.tracing.propagation import parse_traceparent
from trustmesh.tracing.setup import Tracing, TracingOptions, setup_tracing
from trustmesh.tracing.spans import MeshTracer, control_span

APP_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN = "00f067aa0ba902b7"
APP_TRACEPARENT = f"00-{APP_TRACE}-{APP_SPAN}-01".encode()
WEB = "spiffe://example.org/ns/default/sa/web"
ORDERS = "spiffe://example.org/ns/default/sa/orders"


def sidecar(receiver: Receiver, service: str) -> tuple[Tracing, MeshTracer]:
    tracing = setup_tracing(TracingOptions(service_name=service, endpoint=receiver.endpoint))
    return tracing, MeshTracer(tracing.tracer, service=service)


async def flush(*tracings: Tracing) -> None:
    for t in tracings:
        assert await trio.to_thread.run_sync(t.force_flush)


async def stop(*tracings: Tracing) -> None:
    for t in tracings:
        await trio.to_thread.run_sync(t.shutdown)


def one(spans: list[StoredSpan], service: str, kind: str) -> StoredSpan:
    found = [s for s in spans if s.service_name == service and s.kind == kind]
    assert len(found) == 1, [(s.service_name, s.kind, s.name) for s in spans]
    return found[0]


def forward_one_request(
    web: MeshTracer, orders: MeshTracer, app_headers: list[tuple[bytes, bytes]], *, fail_first: bool = False
) -> list[tuple[bytes, bytes]]:
    """What the two sidecars do for one request, minus the sockets; returns what app B receives."""
    received: list[tuple[bytes, bytes]] = []
    with web.outbound(app_headers, method=b"GET", target=b"/orders/7?card=secret", service="orders") as req:
        for attempt in range(2 if fail_first else 1):
            with req.attempt(
                endpoint_address="127.0.0.1", endpoint_port=8443, peer_spiffe_id=ORDERS, attempt=attempt
            ) as client:
                if fail_first and attempt == 0:
                    client.finish(503, error_code="upstream_connect_failed")
                    continue
                on_the_wire = client.forward_headers(app_headers)
                with orders.inbound(
                    on_the_wire,
                    method=b"GET",
                    target=b"/orders/7?card=secret",
                    peer_spiffe_id=WEB,
                    peer_address="127.0.0.1",
                    peer_port=50123,
                    server_address="127.0.0.1",
                    server_port=8443,
                ) as server:
                    server.set_policy("allow", 42)
                    server.set_upstream("127.0.0.1:8080")
                    received = server.forward_headers(on_the_wire)
                    server.finish(200, response_bytes=17)
                client.finish(200)
        req.finish(200)
    return received


async def test_two_sidecars_continue_the_apps_trace(receiver: Receiver) -> None:
    a, web = sidecar(receiver, "web")
    b, orders = sidecar(receiver, "orders")
    try:
        app_headers = [(b"host", b"orders"), (b"traceparent", APP_TRACEPARENT), (b"x-request-id", b"req-1")]
        received = forward_one_request(web, orders, app_headers)
        await flush(a, b)
    finally:
        await stop(a, b)

    assert receiver.store.trace_ids() == [APP_TRACE]  # one trace, the app's own
    spans = receiver.store.spans(APP_TRACE)
    client = one(spans, "web", "CLIENT")
    server = one(spans, "orders", "SERVER")
    assert len(spans) == 2
    # app A's span -> sidecar A CLIENT -> sidecar B SERVER -> app B
    assert client.parent_span_id == APP_SPAN
    assert server.parent_span_id == client.span_id
    tp = parse_traceparent(dict(received)[b"traceparent"])
    assert tp is not None and f"{tp.trace_id:032x}" == APP_TRACE and f"{tp.span_id:016x}" == server.span_id
    assert dict(received)[b"x-request-id"] == b"req-1"

    assert server.name == "GET" and client.name == "GET"
    assert (
        server.attributes.items()
        >= {
            "http.request.method": "GET",
            "url.path": "/orders/7",
            "url.scheme": "https",
            "http.response.status_code": 200,
            "server.address": "127.0.0.1",
            "server.port": 8443,
            "network.peer.address": "127.0.0.1",
            "network.peer.port": 50123,
            "trustmesh.peer.spiffe_id": WEB,
            "trustmesh.policy.decision": "allow",
            "trustmesh.policy.revision": "42",
            "trustmesh.upstream.endpoint": "127.0.0.1:8080",
            "trustmesh.request_id": "req-1",
            "http.response.body.size": 17,
        }.items()
    )
    assert (
        client.attributes.items()
        >= {
            "http.request.method": "GET",
            "url.path": "/orders/7",
            "server.address": "127.0.0.1",
            "server.port": 8443,
            "network.peer.address": "127.0.0.1",
            "trustmesh.peer.spiffe_id": ORDERS,
            "trustmesh.upstream.endpoint": "127.0.0.1:8443",
            "trustmesh.request_id": "req-1",
            "http.response.status_code": 200,
        }.items()
    )
    assert not any("secret" in str(v) for s in spans for v in s.attributes.values())  # query never recorded
    assert server.status_code == client.status_code == "UNSET"
    assert server.resource["service.name"] == "orders"


async def test_retries_are_sibling_client_spans_in_a_trace_the_sidecar_starts(receiver: Receiver) -> None:
    a, web = sidecar(receiver, "web")
    b, orders = sidecar(receiver, "orders")
    try:
        received = forward_one_request(web, orders, [(b"host", b"orders")], fail_first=True)
        await flush(a, b)
    finally:
        await stop(a, b)

    [trace_id] = receiver.store.trace_ids()
    spans = receiver.store.spans(trace_id)
    root = one(spans, "web", "INTERNAL")
    first, second = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_time_unix_nano)
    server = one(spans, "orders", "SERVER")
    assert root.parent_span_id is None and root.name == "GET orders"
    assert first.parent_span_id == second.parent_span_id == root.span_id
    assert server.parent_span_id == second.span_id
    assert first.status_code == "ERROR" and first.attributes["error.type"] == "upstream_connect_failed"
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1 and second.status_code == "UNSET"
    # The generated request id is the same everywhere.
    rid = dict(received)[b"x-request-id"].decode()
    assert {s.attributes["trustmesh.request_id"] for s in spans} == {rid}


async def test_server_5xx_is_an_error_client_4xx_too(receiver: Receiver) -> None:
    a, mesh = sidecar(receiver, "orders")
    try:
        kwargs = dict(
            peer_spiffe_id=WEB,
            peer_address="10.0.0.1",
            peer_port=1,
            server_address="10.0.0.2",
            server_port=8443,
        )
        with mesh.inbound([], method=b"BREW", target=b"/pot", **kwargs) as s:  # type: ignore[arg-type]
            s.finish(503)
        with mesh.inbound([], method=b"GET", target=b"/missing", **kwargs) as s:  # type: ignore[arg-type]
            s.finish(404)
        with (
            mesh.outbound([], method=b"GET", target=b"/", service="x") as req,
            req.attempt(endpoint_address="10.0.0.3", endpoint_port=8443) as c,
        ):
            c.finish(404)
        await flush(a)
    finally:
        await stop(a)
    spans = receiver.store.all_spans()
    brew = next(s for s in spans if s.kind == "SERVER" and s.attributes["url.path"] == "/pot")
    assert brew.status_code == "ERROR" and brew.attributes["error.type"] == "503"
    assert brew.name == "HTTP" and brew.attributes["http.request.method"] == "_OTHER"
    assert brew.attributes["http.request.method_original"] == "BREW"
    missing = next(s for s in spans if s.kind == "SERVER" and s.attributes["url.path"] == "/missing")
    assert missing.status_code == "UNSET"
    client = next(s for s in spans if s.kind == "CLIENT")
    assert client.status_code == "ERROR" and client.attributes["error.type"] == "404"


async def test_log_events_inside_a_span_carry_its_ids(receiver: Receiver, captured_logs: io.StringIO) -> None:
    a, mesh = sidecar(receiver, "orders")
    try:
        with mesh.inbound(
            [(b"traceparent", APP_TRACEPARENT)],
            method=b"POST",
            target=b"/pay",
            peer_spiffe_id=WEB,
            peer_address="10.0.0.1",
            peer_port=1,
            server_address="10.0.0.2",
            server_port=8443,
        ) as span:
            span.finish(201)
            access_log(
                direction="inbound",
                method="POST",
                path="/pay",
                status=201,
                duration_s=0.0123,
                request_id=span.request_id,
                bytes_received=10,
                bytes_sent=20,
                peer_spiffe_id=WEB,
                upstream="127.0.0.1:8080",
            )
        access_log(
            direction="inbound", method="GET", path="/", status=200, duration_s=0, request_id="outside"
        )
        await flush(a)
    finally:
        await stop(a)
    [server] = receiver.store.spans(APP_TRACE)
    events = [json.loads(line) for line in captured_logs.getvalue().splitlines() if '"access"' in line]
    inside, outside = events
    assert inside["trace_id"] == APP_TRACE and inside["span_id"] == server.span_id
    assert (
        inside.items()
        >= {
            "event": "access",
            "direction": "inbound",
            "method": "POST",
            "path": "/pay",
            "status": 201,
            "duration_ms": 12.3,
            "bytes_received": 10,
            "bytes_sent": 20,
            "peer_spiffe_id": WEB,
            "upstream": "127.0.0.1:8080",
            "error_code": None,
            "request_id": span.request_id,
            "level": "info",
        }.items()
        or inside
    )
    assert "trace_id" not in outside


async def test_control_plane_spans(receiver: Receiver) -> None:
    cp = setup_tracing(TracingOptions(service_name="trustmesh-control-plane", endpoint=receiver.endpoint))
    try:
        with control_span(cp.tracer, "join", {"trustmesh.spiffe_id": WEB}), control_span(cp.tracer, "renew"):
            pass
        try:
            with control_span(cp.tracer, "policy.activate", {"trustmesh.policy.revision": "7"}):
                raise ValueError("bad policy")
        except ValueError:
            pass
        await flush(cp)
    finally:
        await stop(cp)
    by_name = {s.name: s for s in receiver.store.all_spans()}
    assert by_name["trustmesh.renew"].parent_span_id == by_name["trustmesh.join"].span_id
    assert by_name["trustmesh.join"].attributes["trustmesh.spiffe_id"] == WEB
    assert by_name["trustmesh.policy.activate"].status_code == "ERROR"
    assert by_name["trustmesh.policy.activate"].events[0]["name"] == "exception"


async def test_tracing_off_is_transparent_but_ids_still_flow() -> None:
    tracing = setup_tracing(TracingOptions(disabled=True))
    mesh = MeshTracer(tracing.tracer, service="orders")
    headers = [(b"traceparent", APP_TRACEPARENT)]
    with mesh.inbound(
        headers,
        method=b"GET",
        target=b"/",
        peer_spiffe_id=None,
        peer_address=None,
        peer_port=None,
        server_address="h",
        server_port=1,
    ) as span:
        forwarded = span.forward_headers(headers)
    assert forwarded[0] == (b"traceparent", APP_TRACEPARENT)
    assert dict(forwarded)[b"x-request-id"] == span.request_id.encode()
    assert span.trace_id is None
    tracing.shutdown()


async def test_receiver_rejects_what_is_not_otlp_protobuf(receiver: Receiver) -> None:
    url = f"{receiver.endpoint}/v1/traces"
    async with httpx.AsyncClient() as http:
        r = await http.post(url, content=b"{}", headers={"content-type": "application/json"})
        assert r.status_code == 415
        r = await http.post(url, content=b"\xff\xff\xff", headers={"content-type": "application/x-protobuf"})
        assert r.status_code == 400
        # gzip is accepted, as the exporter sends with OTEL_EXPORTER_OTLP_COMPRESSION=gzip
        body = gzip.compress(ExportTraceServiceRequest().SerializeToString())
        r = await http.post(
            url, content=body, headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"}
        )
        assert r.status_code == 200
        r = await http.get(f"{receiver.endpoint}/api/traces/{APP_TRACE}")
        assert r.status_code == 404
