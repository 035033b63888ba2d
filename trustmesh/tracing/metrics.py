"""Prometheus metrics of a sidecar and of the control plane, each over its own registry.

Why a registry per instance and not prometheus-client's global one: a test or the demo runs
several sidecars in one process, and each must expose only its own counts on its `/metrics`.

Labels are chosen to answer "who called whom and how did it go" (linkerd's habit): direction,
peer SPIFFE ID and mesh service on requests; bounded sets elsewhere (status class, not status;
reason codes, not messages). Names follow Prometheus conventions: `_total` counters, base units
(`_seconds`, `_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Final, Literal

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from trustmesh.tracing.request_series import RequestSeries
from trustmesh.tracing.request_series import status_class as status_class  # re-exported

Direction = Literal["inbound", "outbound"]
BreakerState = Literal["closed", "open", "half_open"]

# What `/metrics` answers with (Prometheus text format 0.0.4).
CONTENT_TYPE: Final[str] = CONTENT_TYPE_LATEST
# Requests through a sidecar take from well under a millisecond to a timeout; Prometheus'
# defaults start at 5 ms, too coarse for a proxy hop.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
UNKNOWN_PEER: Final = "unknown"
_BREAKER_STATES: Final[tuple[BreakerState, ...]] = ("closed", "open", "half_open")


def _timestamp(when: datetime) -> float:
    return when.timestamp()


class SidecarMetrics:
    """Everything a sidecar counts. One instance per sidecar; `render()` is the `/metrics` body.

    `registry`: register into the process's own registry (the sidecar's `/metrics` then shows
    these next to its other series) instead of a new one. `cert_expiry=False` leaves the expiry
    gauge out, for a process where another component (the identity lifecycle) already owns it.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, cert_expiry: bool = True) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        # The per-request series (requests, latency, policy decisions): a custom collector,
        # see `request_series`.
        self.request_series = RequestSeries(LATENCY_BUCKETS)
        r.register(self.request_series)
        self.tcp_opened = Counter(
            "trustmesh_tcp_connections_opened",
            "TCP connections accepted or opened.",
            ["direction"],
            registry=r,
        )
        self.tcp_closed = Counter(
            "trustmesh_tcp_connections_closed", "TCP connections closed.", ["direction"], registry=r
        )
        self.tcp_read_bytes = Counter(
            "trustmesh_tcp_read_bytes", "Bytes read from peers (after TLS).", ["direction"], registry=r
        )
        self.tcp_write_bytes = Counter(
            "trustmesh_tcp_write_bytes", "Bytes written to peers (before TLS).", ["direction"], registry=r
        )
        self.tls_handshakes = Counter(
            "trustmesh_tls_handshakes", "mTLS handshakes completed.", ["direction"], registry=r
        )
        self.tls_handshake_failures = Counter(
            "trustmesh_tls_handshake_failures",
            "mTLS handshakes failed, by reason code (untrusted_chain, expired, timeout, …).",
            ["direction", "reason"],
            registry=r,
        )
        self.cert_expiry: Gauge | None = None
        if cert_expiry:
            self.cert_expiry = Gauge(
                "trustmesh_cert_expiry_timestamp_seconds",
                "notAfter (Unix seconds) of the SVID (kind=svid) and each bundle anchor (kind=trust_anchor).",
                ["kind", "trust_domain", "spiffe_id", "serial"],
                registry=r,
            )
        self.retries = Counter(
            "trustmesh_retries",
            "Outbound retry attempts (not counting first tries).",
            ["service"],
            registry=r,
        )
        self.retry_budget_exhausted = Counter(
            "trustmesh_retry_budget_exhausted",
            "Retries refused because the service's retry budget was spent.",
            ["service"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "trustmesh_circuit_breaker_state",
            "1 for the current state of each endpoint's circuit breaker, 0 for the others.",
            ["service", "endpoint", "state"],
            registry=r,
        )

    # -- per request ------------------------------------------------------------------------------

    def observe_request(
        self, direction: Direction, *, peer: str | None, service: str, status: int, duration_s: float
    ) -> None:
        """Count one finished request and its latency; call once per request, next to `access_log`."""
        self.request_series.observe(direction, peer or UNKNOWN_PEER, service, status, duration_s)

    def observe_policy_decision(self, decision: str) -> None:
        self.request_series.observe_decision(decision)

    # -- per connection ---------------------------------------------------------------------------

    def connection_opened(self, direction: Direction) -> None:
        self.tcp_opened.labels(direction).inc()

    def connection_closed(self, direction: Direction) -> None:
        self.tcp_closed.labels(direction).inc()

    def add_bytes(self, direction: Direction, *, read: int = 0, written: int = 0) -> None:
        """Add as bytes move (or once at close); long TCP streams show progress either way."""
        if read:
            self.tcp_read_bytes.labels(direction).inc(read)
        if written:
            self.tcp_write_bytes.labels(direction).inc(written)

    def tls_handshake(self, direction: Direction, *, failure_reason: str | None = None) -> None:
        """One finished handshake; `failure_reason` is a short code (`SvidError.reason`, `timeout`…)."""
        if failure_reason is None:
            self.tls_handshakes.labels(direction).inc()
        else:
            self.tls_handshake_failures.labels(direction, failure_reason).inc()

    # -- identity ---------------------------------------------------------------------------------

    def set_cert_expiry(
        self,
        *,
        svid: x509.Certificate,
        spiffe_id: str,
        trust_domain: str,
        anchors: Iterable[x509.Certificate],
    ) -> None:
        """Replace the expiry series with the current SVID and bundle; call after every rotation.

        Anchors no longer in the bundle disappear from `/metrics` (the gauge is cleared first), so an
        alert on `trustmesh_cert_expiry_timestamp_seconds - time() < 86400` never fires for a
        certificate that is already gone.
        """
        gauge = self.cert_expiry
        if gauge is None:
            raise RuntimeError("this SidecarMetrics was built with cert_expiry=False")
        gauge.clear()
        gauge.labels("svid", trust_domain, spiffe_id, format(svid.serial_number, "x")).set(
            _timestamp(svid.not_valid_after_utc)
        )
        for anchor in anchors:
            gauge.labels("trust_anchor", trust_domain, "", format(anchor.serial_number, "x")).set(
                _timestamp(anchor.not_valid_after_utc)
            )

    # -- resilience (issue 5) ---------------------------------------------------------------------

    def observe_retry(self, service: str) -> None:
        self.retries.labels(service).inc()

    def observe_retry_budget_exhausted(self, service: str) -> None:
        self.retry_budget_exhausted.labels(service).inc()

    def set_breaker_state(self, service: str, endpoint: str, state: BreakerState) -> None:
        for s in _BREAKER_STATES:
            self.breaker_state.labels(service, endpoint, s).set(1.0 if s == state else 0.0)

    def render(self) -> bytes:
        """The `/metrics` response body; serve it with `Content-Type: CONTENT_TYPE`."""
        return generate_latest(self.registry)
