"""Workloads: every SPIFFE ID the CA has issued to, with its newest SVID and when it was last seen.

Sources today: the store's issuance audit log (serial, expiry, issued at, how) and registrations
(service). "Last seen" is the later of the newest issuance (a join or a renewal is contact) and
the last span in which the workload called another through the mesh. Endpoints come from
`GuiSources.endpoints`, empty until the configuration stream's registry (issue 5) plugs in there.

Expiry is sent as an instant and counted down in the browser (static/gui.js), so it ticks every
second whatever the refresh interval; it turns to a warning under a quarter of the lifetime.
"""

from __future__ import annotations

from typing import Any

from trustmesh.control.gui.layout import esc, iso_from_ns, page
from trustmesh.control.gui.sources import GuiSources
from trustmesh.store.base import IssuedSvidRecord


def _how(auth: str) -> str:
    return auth.split(":", 1)[0]  # join-token:<id> | renew:<serial> | bootstrap


async def data(sources: GuiSources) -> dict[str, Any]:
    now = sources.clock.now()
    registrations = await sources.registrations()
    latest: dict[str, IssuedSvidRecord] = {}
    live: dict[str, int] = {}
    for record in await sources.store.list_svids():
        current = latest.get(record.spiffe_id)
        if current is None or record.issued_at > current.issued_at:
            latest[record.spiffe_id] = record
        if record.not_after > now:
            live[record.spiffe_id] = live.get(record.spiffe_id, 0) + 1
    workloads = []
    for spiffe_id, record in sorted(latest.items()):
        seen_ns = int(record.issued_at.timestamp() * 1e9)
        span_seen = sources.observations.last_seen(spiffe_id)
        service = sources.observations.service_of(spiffe_id, registrations)
        if service is not None:
            seen_by_service = sources.observations.service_last_seen(service)
            # A sidecar serving requests is alive even when it never calls out.
            span_seen = max(span_seen or 0, seen_by_service or 0) or None
        if span_seen is not None and span_seen > seen_ns:
            seen_ns = span_seen
        workloads.append(
            {
                "spiffe_id": spiffe_id,
                "service": service,
                "endpoints": list(sources.endpoints.endpoints_of(spiffe_id)),
                "serial": record.serial,
                "issued_at": record.issued_at.isoformat(),
                "not_after": record.not_after.isoformat(),
                "not_after_unix_ms": int(record.not_after.timestamp() * 1000),
                "lifetime_s": round((record.not_after - record.issued_at).total_seconds()),
                "expires_in_s": round((record.not_after - now).total_seconds(), 3),
                "issued_by": _how(record.auth),
                "live_svids": live.get(spiffe_id, 0),
                "last_seen": iso_from_ns(seen_ns),
                "last_seen_unix_ms": seen_ns // 1_000_000,
            }
        )
    return {"now": now.isoformat(), "workloads": workloads}


def render_table(d: dict[str, Any]) -> str:
    if not d["workloads"]:
        return '<p class="empty">No SVIDs issued yet. Create a join token and start a sidecar with it.</p>'
    rows = []
    for w in d["workloads"]:
        endpoints = ", ".join(esc(e) for e in w["endpoints"]) or '<span class="muted">—</span>'
        rows.append(
            f'<tr data-spiffe-id="{esc(w["spiffe_id"])}"><td><code>{esc(w["spiffe_id"])}</code></td>'
            f"<td>{esc(w['service'] or '—')}</td><td>{endpoints}</td>"
            f'<td><code title="issued {esc(w["issued_at"])} by {esc(w["issued_by"])}">'
            f"{esc(w['serial'][:16])}</code></td>"
            f'<td><span class="expiry" data-expires-at="{w["not_after_unix_ms"]}" '
            f'data-lifetime-s="{w["lifetime_s"]}" title="{esc(w["not_after"])}">'
            f"{w['expires_in_s']:.0f}s</span></td>"
            f'<td><span class="seen" data-seen-at="{w["last_seen_unix_ms"]}" title="{esc(w["last_seen"])}">'
            f"{esc(w['last_seen'])}</span></td></tr>"
        )
    return (
        "<table id=workloads><thead><tr><th>SPIFFE ID</th><th>service</th><th>endpoint</th>"
        "<th>SVID serial</th><th>expires in</th><th>last seen</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def render_page(d: dict[str, Any], trust_domain: str) -> str:
    body = (
        '<section class="card"><div id="workloads-live" hx-get="/fragments/workloads" '
        f'hx-trigger="every 2s" hx-swap="innerHTML">{render_table(d)}</div>'
        '<p class="muted">Expiry counts down live; it turns orange under a quarter of the SVID\'s lifetime '
        "(sidecars renew at half-life, so that means renewals are failing).</p></section>"
    )
    return page("Workloads", "/workloads", body, trust_domain=trust_domain)
