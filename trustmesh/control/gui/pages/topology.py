"""Topology: services as nodes, calls as edges with rate, success rate and p99; denied calls apart.

The graph itself is drawn in the browser by cytoscape.js (static/topology.js) from `/api/topology`;
the table under it is the same data in text, refreshed by htmx, for reading exact figures.
"""

from __future__ import annotations

from typing import Any

from trustmesh.control.gui.layout import esc, fmt_ms, page
from trustmesh.control.gui.sources import GuiSources


async def data(sources: GuiSources) -> dict[str, Any]:
    topo = sources.observations.topology(sources.now_ns(), await sources.registrations())
    return {
        "window_s": topo.window_s,
        "nodes": [
            {
                "service": n.service,
                "spiffe_ids": list(n.spiffe_ids),
                "requests_in": n.requests_in,
                "denied_in": n.denied_in,
            }
            for n in topo.nodes
        ],
        "edges": [
            {
                "source": e.source,
                "destination": e.destination,
                "requests": e.requests,
                "rate_rps": round(e.rate_rps, 3),
                "success_rate": round(e.success_rate, 4),
                "p99_ms": round(e.p99_ms, 3),
                "denied": e.denied,
                "errors": e.errors,
                "state": e.state,
            }
            for e in topo.edges
        ],
    }


def render_table(d: dict[str, Any]) -> str:
    edges = d["edges"]
    if not edges:
        return (
            '<p class="empty">No calls in the last minute. Sidecars send spans to this listener\'s '
            "<code>/v1/traces</code>; calls appear here as they arrive.</p>"
        )
    rows = "".join(
        f'<tr data-edge="{esc(e["source"])}->{esc(e["destination"])}">'
        f"<td>{esc(e['source'])}</td><td>{esc(e['destination'])}</td>"
        f"<td>{e['rate_rps']:.2f}</td><td>{e['success_rate'] * 100:.0f}%</td>"
        f"<td>{fmt_ms(e['p99_ms'])}</td><td>{e['denied']}</td><td>{e['requests']}</td>"
        f'<td><span class="badge {esc(e["state"])}">{esc(e["state"])}</span></td></tr>'
        for e in edges
    )
    return (
        f"<table id=edges><thead><tr><th>from</th><th>to</th><th>req/s</th><th>success</th><th>p99</th>"
        f"<th>denied</th><th>requests ({d['window_s']:.0f} s)</th><th>state</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def render_page(d: dict[str, Any], trust_domain: str) -> str:
    body = (
        '<div id="graph" role="img" aria-label="service topology graph"></div>'
        '<section class="card"><h2>Calls over the last minute</h2>'
        '<div id="edges-live" hx-get="/fragments/topology" hx-trigger="every 2s" hx-swap="innerHTML">'
        f"{render_table(d)}</div></section>"
    )
    head = (
        '<script src="/static/cytoscape.min.js" defer></script>'
        '<script src="/static/topology.js" defer></script>'
    )
    return page("Topology", "/topology", body, trust_domain=trust_domain, head=head)
