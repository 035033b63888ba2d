"""`/metrics` bodies, parsed by prometheus-client's own parser, count exactly what happened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from trustmesh.tracing.metrics import SidecarMetrics, status_class

WEB = "spiffe://example.org/web"


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(body: bytes, name: str, **labels: str) -> float:
    return samples(body)[(name, frozenset(labels.items()))]


def cert(serial: int, not_after: datetime) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_after - timedelta(days=1))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )


def test_requests_by_direction_peer_service_and_status_class() -> None:
    m = SidecarMetrics()
    for status in (200, 201, 204, 503):
        m.observe_request("inbound", peer=WEB, service="orders", status=status, duration_s=0.002)
    m.observe_request("outbound", peer=None, service="payments", status=404, duration_s=0.3)
    body = m.render()
    assert (
        value(
            body,
            "trustmesh_requests_total",
            direction="inbound",
            peer=WEB,
            service="orders",
            status_class="2xx",
        )
        == 3
    )
    assert (
        value(
            body,
            "trustmesh_requests_total",
            direction="inbound",
            peer=WEB,
            service="orders",
            status_class="5xx",
        )
        == 1
    )
    assert (
        value(
            body,
            "trustmesh_requests_total",
            direction="outbound",
            peer="unknown",
            service="payments",
            status_class="4xx",
        )
        == 1
    )
    hist = dict(direction="inbound", peer=WEB, service="orders")
    assert value(body, "trustmesh_request_duration_seconds_count", **hist) == 4
    assert value(body, "trustmesh_request_duration_seconds_bucket", **hist, le="0.0025") == 4
    assert value(body, "trustmesh_request_duration_seconds_bucket", **hist, le="0.001") == 0
    assert abs(value(body, "trustmesh_request_duration_seconds_sum", **hist) - 0.008) < 1e-9


def test_latency_buckets_are_cumulative_and_bounds_inclusive() -> None:
    """Prometheus `le`: a request taking exactly a bound's time counts in that bucket; one
    slower than the last bound only in +Inf. Status classes of one label set share a histogram."""
    m = SidecarMetrics()
    for status, duration in ((200, 0.001), (500, 0.0011), (200, 45.0), (0, 0.0)):
        m.observe_request("inbound", peer=WEB, service="orders", status=status, duration_s=duration)
    body = m.render()
    hist = dict(direction="inbound", peer=WEB, service="orders")
    assert value(body, "trustmesh_request_duration_seconds_bucket", **hist, le="0.0005") == 1
    assert value(body, "trustmesh_request_duration_seconds_bucket", **hist, le="0.001") == 2
    assert value(body, "trustmesh_request_duration_seconds_bucket", **hist, le="0.0025") == 3
    assert value(body, "trustmesh_request_duration_seconds_bucket", **hist, le="30.0") == 3
    assert value(body, "trustmesh_request_duration_seconds_bucket", **hist, le="+Inf") == 4
    assert value(body, "trustmesh_request_duration_seconds_count", **hist) == 4
    assert value(body, "trustmesh_requests_total", **hist, status_class="other") == 1
    assert value(body, "trustmesh_requests_total", **hist, status_class="2xx") == 2


def test_connections_bytes_tls_policy_resilience() -> None:
    m = SidecarMetrics()
    for _ in range(3):
        m.connection_opened("inbound")
    m.connection_closed("inbound")
    m.add_bytes("inbound", read=100, written=40)
    m.add_bytes("inbound", read=1)
    m.tls_handshake("inbound")
    m.tls_handshake("inbound", failure_reason="untrusted_chain")
    m.tls_handshake("inbound", failure_reason="untrusted_chain")
    m.observe_policy_decision("allow")
    m.observe_policy_decision("deny")
    m.observe_policy_decision("allow")
    m.observe_retry("orders")
    m.observe_retry_budget_exhausted("orders")
    m.set_breaker_state("orders", "10.0.0.1:8443", "open")
    body = m.render()
    assert value(body, "trustmesh_tcp_connections_opened_total", direction="inbound") == 3
    assert value(body, "trustmesh_tcp_connections_closed_total", direction="inbound") == 1
    assert value(body, "trustmesh_tcp_read_bytes_total", direction="inbound") == 101
    assert value(body, "trustmesh_tcp_write_bytes_total", direction="inbound") == 40
    assert value(body, "trustmesh_tls_handshakes_total", direction="inbound") == 1
    assert (
        value(body, "trustmesh_tls_handshake_failures_total", direction="inbound", reason="untrusted_chain")
        == 2
    )
    assert value(body, "trustmesh_policy_decisions_total", decision="allow") == 2
    assert value(body, "trustmesh_policy_decisions_total", decision="deny") == 1
    assert value(body, "trustmesh_retries_total", service="orders") == 1
    assert value(body, "trustmesh_retry_budget_exhausted_total", service="orders") == 1
    states = {
        s: value(body, "trustmesh_circuit_breaker_state", service="orders", endpoint="10.0.0.1:8443", state=s)
        for s in ("closed", "open", "half_open")
    }
    assert states == {"closed": 0, "open": 1, "half_open": 0}


def test_cert_expiry_for_svid_and_every_anchor_replaced_on_rotation() -> None:
    m = SidecarMetrics()
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    svid, a1, a2 = cert(0xA, t0), cert(0xB, t0 + timedelta(days=365)), cert(0xC, t0 + timedelta(days=700))
    m.set_cert_expiry(svid=svid, spiffe_id=WEB, trust_domain="example.org", anchors=[a1, a2])
    body = m.render()
    common = dict(trust_domain="example.org")
    assert value(
        body, "trustmesh_cert_expiry_timestamp_seconds", kind="svid", spiffe_id=WEB, serial="a", **common
    ) == (t0.timestamp())
    anchors = {k: v for k, v in samples(body).items() if ("kind", "trust_anchor") in k[1]}
    assert sorted(anchors.values()) == [
        (t0 + timedelta(days=365)).timestamp(),
        (t0 + timedelta(days=700)).timestamp(),
    ]
    # After rotation the old anchor is gone from /metrics.
    m.set_cert_expiry(svid=svid, spiffe_id=WEB, trust_domain="example.org", anchors=[a2])
    anchors = {k: v for k, v in samples(m.render()).items() if ("kind", "trust_anchor") in k[1]}
    assert list(anchors.values()) == [(t0 + timedelta(days=700)).timestamp()]


def test_instances_do_not_share_counts() -> None:
    a, b = SidecarMetrics(), SidecarMetrics()
    a.observe_policy_decision("allow")
    assert "trustmesh_policy_decisions_total{" not in b.render().decode()


def test_status_class() -> None:
    assert [status_class(s) for s in (100, 200, 399, 404, 599, 0, 600)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "other",
        "other",
    ]
