"""MeshObservations without I/O: spans in, edges and decisions out."""

from __future__ import annotations

import itertools

import pytest

from trustmesh.control.gui.observations import MeshObservations, p99
from trustmesh.tracing.otlp_receiver import StoredSpan

S = 1_000_000_000  # ns per second
T0 = 1_800_000_000 * S
WEB, API, DB = (f"spiffe://td/ns/demo/sa/{s}" for s in ("web", "api", "db"))
_ids = itertools.count(1)


def server(
    service: str,
    peer: str | None,
    *,
    end: int,
    ms: float = 5.0,
    status: int = 200,
    decision: str | None = "allow",
    parent: str | None = None,
    **extra: object,
) -> StoredSpan:
    attrs: dict[str, object] = {
        "http.response.status_code": status,
        "http.request.method": "GET",
        "url.path": "/x",
        **extra,
    }
    if peer is not None:
        attrs["trustmesh.peer.spiffe_id"] = peer
    if decision is not None:
        attrs["trustmesh.policy.decision"] = decision
        attrs["trustmesh.policy.revision"] = "rev1"
    return StoredSpan(
        trace_id=f"{next(_ids):032x}",
        span_id=f"{next(_ids):016x}",
        parent_span_id=parent,
        name="GET",
        kind="SERVER",
        start_time_unix_nano=end - int(ms * 1e6),
        end_time_unix_nano=end,
        attributes=attrs,  # type: ignore[arg-type]
        status_code="ERROR" if status >= 500 or decision == "deny" else "UNSET",
        status_message="",
        service_name=service,
    )


def client(service: str, peer: str, target_service: str, *, end: int, span_id: str) -> StoredSpan:
    return StoredSpan(
        trace_id="0" * 32,
        span_id=span_id,
        parent_span_id=None,
        name="GET",
        kind="CLIENT",
        start_time_unix_nano=end - 1000,
        end_time_unix_nano=end,
        attributes={"trustmesh.peer.spiffe_id": peer, "trustmesh.service": target_service},
        status_code="UNSET",
        status_message="",
        service_name=service,
    )


def test_edges_have_rate_success_p99_and_denials() -> None:
    obs = MeshObservations(window_s=60)
    spans = [server("api", WEB, end=T0 + i * S // 10, ms=1 + i) for i in range(100)]
    spans += [server("api", WEB, end=T0 + 5 * S, status=503)]
    spans += [server("db", WEB, end=T0 + 5 * S + i, decision="deny", status=403) for i in range(4)]
    obs.ingest(spans, now_ns=T0)
    topo = obs.topology(T0 + 60 * S, {WEB: "web", API: "api", DB: "db"})
    edges = {(e.source, e.destination): e for e in topo.edges}
    api = edges[("web", "api")]
    assert api.requests == 101 and api.errors == 1 and api.denied == 0
    assert api.success_rate == pytest.approx(100 / 101)
    assert api.rate_rps == pytest.approx(101 / 60)
    assert api.p99_ms == pytest.approx(99.0)  # nearest rank 100 of 101: 1..100 ms plus one more 5 ms
    assert api.state == "degraded"
    db = edges[("web", "db")]
    assert (db.requests, db.denied, db.success_rate, db.state) == (4, 4, 0.0, "denied")
    assert [n.service for n in topo.nodes] == ["api", "db", "web"]
    assert {n.service: n.denied_in for n in topo.nodes} == {"api": 0, "db": 4, "web": 0}


def test_calls_leave_the_window() -> None:
    obs = MeshObservations(window_s=10)
    obs.ingest([server("api", WEB, end=T0)], now_ns=T0)
    obs.ingest([server("api", WEB, end=T0 + 20 * S)], now_ns=T0 + 20 * S)
    (edge,) = obs.topology(T0 + 20 * S, {WEB: "web"}).edges
    assert edge.requests == 1
    assert obs.topology(T0 + 40 * S, {WEB: "web"}).edges == ()


def test_rate_just_after_start_is_over_the_time_observed() -> None:
    obs = MeshObservations(window_s=60)
    obs.ingest([server("api", WEB, end=T0 + i) for i in range(20)], now_ns=T0)
    (edge,) = obs.topology(T0 + 10 * S, {WEB: "web"}).edges
    assert edge.rate_rps == pytest.approx(2.0)


def test_caller_named_from_client_spans_without_registration() -> None:
    obs = MeshObservations()
    # web's CLIENT span says it called `api` and met API's identity; api's SERVER span is its child.
    obs.ingest([client("web", API, "api", end=T0, span_id="c1")], now_ns=T0)
    obs.ingest([server("api", WEB, end=T0, parent="c1")], now_ns=T0)
    (edge,) = obs.topology(T0).edges
    assert (edge.source, edge.destination) == ("web", "api")
    assert obs.service_of(API, {}) == "api"
    # Unknown caller, no parent: shown by its SPIFFE ID rather than dropped.
    obs.ingest([server("db", "spiffe://td/stranger", end=T0)], now_ns=T0)
    assert ("spiffe://td/stranger", "db") in {(e.source, e.destination) for e in obs.topology(T0).edges}


def test_decisions_newest_first_with_optional_rule_attributes() -> None:
    obs = MeshObservations(max_decisions=3)
    obs.ingest([server("api", WEB, end=T0 + i) for i in range(5)], now_ns=T0)
    obs.ingest(
        [
            server(
                "db",
                WEB,
                end=T0 + 9,
                decision="deny",
                status=403,
                **{"trustmesh.policy.policy": "no-db", "trustmesh.policy.rule": 2},
            )
        ],
        now_ns=T0,
    )
    decisions = obs.decisions()
    assert len(decisions) == 3
    first = decisions[0]
    assert (first.decision, first.destination, first.policy, first.rule) == ("DENY", "db", "no-db", 2)
    assert first.source_id == WEB and first.revision == "rev1" and first.status == 403
    assert obs.last_seen(WEB) == T0 + 9


def test_bounded_memory_keeps_rates_honest() -> None:
    obs = MeshObservations(window_s=60, max_calls=10)
    obs.ingest([server("api", WEB, end=T0 + i * S) for i in range(30)], now_ns=T0 + 30 * S)
    (edge,) = obs.topology(T0 + 30 * S, {WEB: "web"}).edges
    assert edge.requests == 10 and obs.dropped_calls == 20
    assert edge.rate_rps == pytest.approx(1.0)  # 10 calls over the 10 s since the oldest kept, not 60


def test_spans_without_trustmesh_attributes_are_survived() -> None:
    obs = MeshObservations()
    bare = server("api", None, end=T0, decision=None)
    obs.ingest([bare], now_ns=T0)
    (edge,) = obs.topology(T0).edges
    assert edge.source == "unknown" and obs.decisions() == []


def test_p99_nearest_rank() -> None:
    assert p99([]) == 0.0
    assert p99([3_000_000]) == 3.0
    assert p99(list(range(1, 201))) == pytest.approx(198 / 1e6)
