"""Issue 6 end to end: app → sidecar web → sidecar api → app, real processes, a real collector.

One mesh for the module (a control plane, two traced sidecars exporting to the in-test OTLP/HTTP
collector, and later two more exporting nowhere): what a user sees in Jaeger, in the sidecars'
JSON logs and on `/metrics`.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.observability.collector import Collector
from tests.sidecar_e2e.mesh import LOOPBACK, EchoApp, Mesh, Sidecar, spiffe_id, wait_until
from trustmesh.tracing.otlp_receiver import StoredSpan

pytestmark = pytest.mark.slow


@dataclass
class Traced:
    mesh: Mesh
    collector: Collector
    app: EchoApp
    web: Sidecar  # outbound to api
    api: Sidecar  # inbound to app


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    root: Path = tmp_path_factory.mktemp("obs")
    collector = Collector()
    try:
        with Mesh(root) as mesh:
            app = mesh.start_app()
            tracing = ["--otlp-endpoint", collector.endpoint, "--trace-sample-ratio", "1.0"]
            api = mesh.start_sidecar("api", inbound_to=app.port, extra=tracing)
            web = mesh.start_sidecar("web", outbound={"api": api}, extra=tracing)
            yield Traced(mesh, collector, app, web, api)
    finally:
        collector.close()


def _ids() -> tuple[str, str]:
    return f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"


def _one(spans: list[StoredSpan], kind: str, service: str) -> StoredSpan:
    found = [s for s in spans if s.kind == kind and s.service_name == service]
    assert len(found) == 1, [(s.kind, s.service_name, s.name) for s in spans]
    return found[0]


def test_one_trace_continued_from_the_apps_traceparent(traced: Traced) -> None:
    trace_id, app_span = _ids()
    status, _, _ = traced.web.call(
        "api",
        "GET",
        "/orders/7?token=secret",
        headers={"traceparent": f"00-{trace_id}-{app_span}-01", "x-request-id": "req-obs-1"},
    )
    assert status == 200

    spans = traced.collector.wait_spans(trace_id, 2)
    client = _one(spans, "CLIENT", "web")
    server = _one(spans, "SERVER", "api")
    assert {s.trace_id for s in spans} == {trace_id}
    # Parent to child: the app's span → web's CLIENT span → api's SERVER span → the app behind api.
    assert client.parent_span_id == app_span
    assert server.parent_span_id == client.span_id
    seen = traced.app.seen[-1]
    assert seen.headers["traceparent"] == [f"00-{trace_id}-{server.span_id}-01"]
    assert seen.headers["x-request-id"] == ["req-obs-1"]
    assert seen.path == "/orders/7?token=secret"

    api_inbound = f"{LOOPBACK}:{traced.api.inbound_ports[0]}"
    assert client.name == "GET"
    assert client.attributes["http.request.method"] == "GET"
    assert client.attributes["url.path"] == "/orders/7"  # the query is never recorded
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["server.address"] == LOOPBACK
    assert client.attributes["server.port"] == traced.api.inbound_ports[0]
    assert client.attributes["trustmesh.upstream.endpoint"] == api_inbound
    assert client.attributes["trustmesh.peer.spiffe_id"] == spiffe_id("api")
    assert client.attributes["trustmesh.service"] == "api"
    assert client.attributes["trustmesh.request_id"] == "req-obs-1"

    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["url.path"] == "/orders/7"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["server.port"] == traced.api.inbound_ports[0]
    assert server.attributes["network.peer.address"] == LOOPBACK
    assert server.attributes["trustmesh.peer.spiffe_id"] == spiffe_id("web")
    assert server.attributes["trustmesh.policy.decision"] == "allow"
    assert server.attributes["trustmesh.policy.policy"] == "e2e-allow-all"
    assert server.attributes["trustmesh.policy.rule"] == 0
    assert isinstance(server.attributes["trustmesh.policy.revision"], str)
    assert server.attributes["trustmesh.upstream.endpoint"] == f"{LOOPBACK}:{traced.app.port}"
    assert server.attributes["trustmesh.request_id"] == "req-obs-1"
    assert server.status_code != "ERROR" and client.status_code != "ERROR"

    # The request's log lines, in both sidecars, carry its trace id.
    for sidecar, span in ((traced.web, client), (traced.api, server)):
        access = [
            e
            for e in sidecar.process.log_events()
            if e.get("event") == "access" and e.get("request_id") == "req-obs-1"
        ]
        assert len(access) == 1, sidecar.process.log_tail()
        assert access[0]["trace_id"] == trace_id
        assert access[0]["status"] == 200
        assert access[0]["path"] == "/orders/7"
        assert access[0]["method"] == "GET"
        assert access[0]["error_code"] is None
        if span.kind == "SERVER":
            assert access[0]["span_id"] == span.span_id
    web_access = next(e for e in traced.web.process.log_events() if e.get("request_id") == "req-obs-1")
    assert web_access["direction"] == "outbound"
    assert web_access["peer_spiffe_id"] == spiffe_id("api")
    assert web_access["upstream"] == api_inbound
    assert web_access["attempts"] == 1


def test_without_trace_context_the_sidecar_starts_one_trace(traced: Traced) -> None:
    status, _, _ = traced.web.call("api", "GET", "/fresh")
    assert status == 200
    seen = traced.app.seen[-1]
    (traceparent,) = seen.headers["traceparent"]
    trace_id = traceparent.split("-")[1]
    (request_id,) = seen.headers["x-request-id"]
    spans = traced.collector.wait_spans(trace_id, 3)
    root = _one(spans, "INTERNAL", "web")
    client = _one(spans, "CLIENT", "web")
    server = _one(spans, "SERVER", "api")
    assert root.parent_span_id is None
    assert client.parent_span_id == root.span_id
    assert server.parent_span_id == client.span_id
    assert server.attributes["trustmesh.request_id"] == request_id


def test_b3_context_is_accepted(traced: Traced) -> None:
    trace_id, span_id = _ids()
    status, _, _ = traced.web.call("api", "GET", "/b3", headers={"b3": f"{trace_id}-{span_id}-1"})
    assert status == 200
    spans = traced.collector.wait_spans(trace_id, 2)
    assert _one(spans, "CLIENT", "web").parent_span_id == span_id
    server = _one(spans, "SERVER", "api")
    seen = traced.app.seen[-1]
    assert seen.headers["traceparent"] == [f"00-{trace_id}-{server.span_id}-01"]


def _requests(sidecar: Sidecar, direction: str, peer: str) -> float:
    status, body = sidecar.admin_get("/metrics")
    assert status == 200
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        if family.name != "trustmesh_requests":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "trustmesh_requests_total"
                and labels["direction"] == direction
                and labels["peer"] == peer
                and labels["status_class"] == "2xx"
            ):
                total += sample.value
    return total


def test_metrics_count_exactly_the_requests_made(traced: Traced) -> None:
    web_before = _requests(traced.web, "outbound", spiffe_id("api"))
    api_before = _requests(traced.api, "inbound", spiffe_id("web"))
    for i in range(7):
        status, _, _ = traced.web.call("api", "GET", f"/count/{i}")
        assert status == 200
    assert _requests(traced.web, "outbound", spiffe_id("api")) - web_before == 7
    assert _requests(traced.api, "inbound", spiffe_id("web")) - api_before == 7

    status, body = traced.api.admin_get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    # Everything admin exported before is still there, next to the new series.
    for name in (
        "trustmesh_request_duration_seconds",
        "trustmesh_tls_handshakes",
        "trustmesh_policy_decisions",
        "trustmesh_tcp_connections_opened",
        "trustmesh_cert_expiry_timestamp_seconds",
        "trustmesh_sidecar_serving",
    ):
        assert name in families, sorted(families)
    decisions = {
        s.labels["decision"]: s.value
        for s in families["trustmesh_policy_decisions"].samples
        if s.name.endswith("_total")
    }
    assert decisions.get("allow", 0) >= 7
    kinds = {s.labels["kind"] for s in families["trustmesh_cert_expiry_timestamp_seconds"].samples}
    assert kinds == {"svid", "trust_anchor"}


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return f"http://{LOOPBACK}:{s.getsockname()[1]}"


def test_collector_down_traffic_unaffected(traced: Traced) -> None:
    mesh = traced.mesh
    dead = ["--otlp-endpoint", _dead_endpoint()]
    api = mesh.start_sidecar("api-nocollector", inbound_to=traced.app.port, extra=dead)
    web = mesh.start_sidecar("web-nocollector", outbound={"api": api}, extra=dead)
    statuses = [web.call("api", "GET", f"/down/{i}")[0] for i in range(20)]
    assert statuses == [200] * 20
    # The export failure is reported, once per interval rather than per batch.
    wait_until(
        lambda: any(e.get("event") == "otlp_export_failed" for e in web.process.log_events()),
        30.0,
        "otlp_export_failed logged",
        web.process,
    )
    failures = [e for e in web.process.log_events() if e.get("event") == "otlp_export_failed"]
    assert len(failures) == 1
    statuses = [web.call("api", "GET", f"/down/again/{i}")[0] for i in range(5)]
    assert statuses == [200] * 5


def test_sidecar_errors_name_the_request_id(traced: Traced) -> None:
    mesh = traced.mesh
    # An inbound whose app is not listening: the sidecar answers 502 itself.
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        dead_app = s.getsockname()[1]
    api = mesh.start_sidecar("api-noapp", inbound_to=dead_app)
    web = mesh.start_sidecar("web-noapp", outbound={"api": api})
    status, headers, body = web.call("api", "GET", "/x", headers={"x-request-id": "req-err-1"})
    assert status == 502
    assert headers["x-request-id"] == "req-err-1"
    assert b"req-err-1" in body
    status, headers, body = web.call("api", "GET", "/y")
    assert status == 502
    assert headers["x-request-id"].encode() in body
    # web retries a 502 (GET is replayable): every attempt reached api with the same id.
    access = [e for e in api.process.log_events() if e.get("event") == "access"]
    assert {e["error_code"] for e in access} == {"app-unreachable"}
    assert {e["status"] for e in access} == {502}
    first = [e for e in access if e["request_id"] == "req-err-1"]
    assert len(first) >= 1
    (outbound,) = [
        e for e in web.process.log_events() if e.get("event") == "access" and e["request_id"] == "req-err-1"
    ]
    assert outbound["status"] == 502
    assert outbound["attempts"] == len(first)
