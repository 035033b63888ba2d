"""Authorization engine benchmark: decisions per second with 10 and 1,000 policies, one core.

Most policies select other workloads (as in a real mesh, where each service has its
own), so the figure shows that a decision costs the same however many policies
exist elsewhere. The request mix is HTTP allowed, HTTP default-denied, HTTP denied
by a DENY rule, a path that needs normalising, and a TCP connection.

Run: `python -m bench.policy_bench` (or `make bench`, which includes it).
"""

from __future__ import annotations

import time

from trustmesh.policy.engine import PolicyEngine
from trustmesh.policy.loader import load_revision
from trustmesh.policy.model import Problems

TARGET = "spiffe://example.org/ns/shop/sa/api"
WEB = "spiffe://example.org/ns/shop/sa/web"
ETL = "spiffe://example.org/ns/batch/sa/etl"

_SELECTING = f"""\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata: {{name: web-reads-api}}
spec:
  selector: {{spiffeIds: ["{TARGET}"]}}
  action: ALLOW
  rules:
    - from: {{spiffeIds: ["{WEB}", "spiffe://example.org/ns/batch/*"]}}
      to: {{methods: [GET, HEAD], paths: ["/items", "/items/*"], ports: [9001]}}
    - from: {{spiffeIds: ["{ETL}"]}}
      to: {{ports: [5432]}}
---
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin}}
spec:
  selector: {{spiffeIds: ["spiffe://example.org/ns/shop/*"]}}
  action: DENY
  rules:
    - to: {{paths: ["/items/admin", "/items/admin/*"]}}
"""

_OTHER = """\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata: {{name: svc-{i}}}
spec:
  selector: {{spiffeIds: ["spiffe://example.org/ns/team-{team}/sa/svc-{i}"]}}
  action: {action}
  rules:
    - from: {{spiffeIds: ["spiffe://example.org/ns/team-{team}/*"]}}
      to: {{methods: [GET, POST], paths: ["/api/*"]}}
"""

_REQUESTS: tuple[tuple[str, str | None, str | None, int | None], ...] = (
    (WEB, "GET", "/items/42", 9001),  # allowed
    (WEB, "POST", "/items/42", 9001),  # default deny
    (WEB, "GET", "/items/admin", 9001),  # deny rule
    (WEB, "GET", "/items//7?x=1", 9001),  # normalised, allowed
    (ETL, None, None, 5432),  # TCP, allowed
)


def build_engine(policies: int) -> PolicyEngine:
    """`policies` documents in total: the two that select TARGET, the rest selecting other workloads."""
    documents = [_SELECTING]
    for i in range(policies - 2):
        documents.append(_OTHER.format(i=i, team=i % 50, action="DENY" if i % 10 == 0 else "ALLOW"))
    loaded = load_revision({"bench.yaml": "---\n".join(documents).encode()}, revision_id="bench")
    if isinstance(loaded, Problems):
        raise SystemExit(loaded.format())
    return PolicyEngine(loaded)


def decisions_per_second(engine: PolicyEngine, seconds: float = 1.0) -> float:
    """Best of three timed runs of the request mix (one thread, so one core)."""
    decide = engine.decide
    rounds = 2000
    best = 0.0
    for _ in range(3):
        done = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(rounds):
                for source, method, path, port in _REQUESTS:
                    decide(source, TARGET, method, path, port)
            done += rounds * len(_REQUESTS)
        best = max(best, done / elapsed)
    return best


def main() -> None:
    rows = []
    for count in (10, 1000):
        engine = build_engine(count)
        rate = decisions_per_second(engine)
        rows.append(f"| {count:,} | {rate:,.0f} | {1e6 / rate:.2f} |")
    print("## Policy engine (trustmesh.policy.engine)\n")
    print("One thread; request mix: HTTP allow, default deny, DENY rule, path needing normalisation, TCP.")
    print("Two policies select the workload; the rest select other workloads.\n")
    print("| policies | decisions/s | µs/decision |")
    print("|---:|---:|---:|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
