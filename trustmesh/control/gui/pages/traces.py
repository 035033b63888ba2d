"""Traces: the newest traces the control plane received, and one trace as a waterfall.

Both read the OTLP receiver's `TraceStore` (bounded, in memory), the same one behind
`GET /api/traces` and `GET /api/traces/{id}`. The waterfall orders spans depth-first from the
root, so a CLIENT span of one sidecar sits right above the SERVER span of the next, and colours
each row by the sidecar (`service.name`) that reported it.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict
from typing import Any

from trustmesh.control.gui.layout import esc, fmt_ms, iso_from_ns, page
from trustmesh.control.gui.sources import GuiSources
from trustmesh.tracing.otlp_receiver import StoredSpan
from trustmesh.tracing.spans import HTTP_STATUS, PEER_SPIFFE_ID, POLICY_DECISION, URL_PATH

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_ERROR_BADGE = '<span class="badge error">error</span>'
_DENIED_BADGE = '<span class="badge deny">denied by policy</span>'
_PALETTE = ("#2f5bd3", "#0f766e", "#9333ea", "#c2410c", "#be185d", "#4d7c0f", "#0369a1", "#a16207")


def colour(service: str) -> str:
    """A stable colour per service (crc32, not hash(): the same in every process)."""
    return _PALETTE[zlib.crc32(service.encode()) % len(_PALETTE)]


def _service_badge(service: str) -> str:
    return f'<span class="svc" style="background:{colour(service)}">{esc(service)}</span>'


def recent_data(sources: GuiSources, limit: int = 30) -> dict[str, Any]:
    out = []
    for summary in sources.traces.recent(limit):
        entry = asdict(summary)
        # A denial is an ERROR span too; say which it was, since that is the first question.
        entry["denied"] = any(
            str(s.attributes.get(POLICY_DECISION, "")).lower() == "deny"
            for s in sources.traces.spans(summary.trace_id)
        )
        out.append(entry)
    return {"traces": out}


def _tree_order(spans: list[StoredSpan]) -> list[tuple[StoredSpan, int]]:
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[StoredSpan]] = {}
    for s in spans:
        parent = s.parent_span_id if s.parent_span_id in ids else None
        children.setdefault(parent, []).append(s)
    out: list[tuple[StoredSpan, int]] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x.start_time_unix_nano):
            out.append((s, depth))
            if depth < 64:  # a malformed trace with a parent cycle cannot recurse forever
                walk(s.span_id, depth + 1)

    walk(None, 0)
    return out


def waterfall_data(sources: GuiSources, trace_id: str) -> dict[str, Any] | None:
    spans = sources.traces.spans(trace_id)
    if not spans:
        return None
    start = min(s.start_time_unix_nano for s in spans)
    end = max(s.end_time_unix_nano for s in spans)
    total = max(1, end - start)
    rows = []
    for span, depth in _tree_order(spans):
        a = span.attributes
        rows.append(
            {
                "span_id": span.span_id,
                "parent_span_id": span.parent_span_id,
                "depth": depth,
                "service": span.service_name,
                "name": span.name,
                "kind": span.kind,
                "status": span.status_code,
                "http_status": a.get(HTTP_STATUS),
                "path": a.get(URL_PATH),
                "peer": a.get(PEER_SPIFFE_ID),
                "decision": a.get(POLICY_DECISION),
                "start_ms": (span.start_time_unix_nano - start) / 1e6,
                "duration_ms": span.duration_ns / 1e6,
                "offset_pct": 100 * (span.start_time_unix_nano - start) / total,
                "width_pct": 100 * max(0, span.duration_ns) / total,
            }
        )
    return {
        "trace_id": trace_id,
        "start": iso_from_ns(start),
        "duration_ms": total / 1e6,
        "services": sorted({s.service_name for s in spans}),
        "spans": rows,
    }


def render_recent(d: dict[str, Any]) -> str:
    traces = d["traces"]
    if not traces:
        return (
            '<p class="empty">No traces yet. Point sidecars at this listener: '
            "<code>OTEL_EXPORTER_OTLP_ENDPOINT=http://&lt;gui address&gt;</code>.</p>"
        )
    rows = "".join(
        f'<tr class="trace-row"><td><a href="/traces/{esc(t["trace_id"])}">'
        f"<code>{esc(t['trace_id'][:16])}</code></a></td><td>{esc(t['root_name'])}</td>"
        f"<td>{' '.join(_service_badge(s) for s in t['services'])}</td>"
        f"<td>{t['span_count']}</td><td>{fmt_ms(t['duration_ns'] / 1e6)}</td>"
        f"<td class=mono>{esc(iso_from_ns(t['start_time_unix_nano'])[11:23])}</td>"
        f"<td>{_DENIED_BADGE if t['denied'] else _ERROR_BADGE if t['error'] else ''}</td></tr>"
        for t in traces
    )
    return (
        "<table id=traces><thead><tr><th>trace</th><th>root</th><th>services</th><th>spans</th>"
        f"<th>duration</th><th>start (UTC)</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
    )


def render_waterfall(d: dict[str, Any]) -> str:
    rows = []
    for s in d["spans"]:
        detail = " ".join(
            esc(x) for x in (s["http_status"], s["decision"] and f"policy {s['decision']}") if x
        )
        rows.append(
            f'<tr class="span-row" data-service="{esc(s["service"])}" data-kind="{esc(s["kind"])}">'
            f'<td style="padding-left:{10 + 18 * s["depth"]}px">{_service_badge(s["service"])} '
            f"{esc(s['kind'])} <b>{esc(s['name'])}</b></td>"
            f"<td><code>{esc(s['path'] or '')}</code> {detail}</td><td>{fmt_ms(s['duration_ms'])}</td>"
            f'<td class="bar-cell"><div class="bar-track">'
            f'<div class="bar{" error" if s["status"] == "ERROR" else ""}" '
            f'style="left:{s["offset_pct"]:.2f}%;width:{s["width_pct"]:.2f}%;background:{colour(s["service"])}"></div></div></td></tr>'
        )
    return (
        f'<p>Trace <code id="trace-id">{esc(d["trace_id"])}</code>, {len(d["spans"])} spans from '
        f"{len(d['services'])} sidecars ({', '.join(esc(s) for s in d['services'])}), "
        f"{fmt_ms(d['duration_ms'])}, started {esc(d['start'])}</p>"
        "<table class=waterfall id=waterfall><thead><tr><th>span</th><th>request</th><th>duration</th>"
        f"<th>timeline</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def render_page(d: dict[str, Any], trust_domain: str) -> str:
    body = (
        '<section class="card"><div id="traces-live" hx-get="/fragments/traces" hx-trigger="every 2s" '
        f'hx-swap="innerHTML">{render_recent(d)}</div></section>'
    )
    return page("Traces", "/traces", body, trust_domain=trust_domain)


def render_trace_page(d: dict[str, Any] | None, trace_id: str, trust_domain: str) -> str:
    inner = render_waterfall(d) if d is not None else '<p class="empty">Trace not found (or evicted).</p>'
    body = (
        '<p><a href="/traces">← recent traces</a></p><section class="card">'
        f'<div id="waterfall-live" hx-get="/fragments/traces/{esc(trace_id)}" hx-trigger="every 2s" '
        f'hx-swap="innerHTML">{inner}</div></section>'
    )
    return page("Trace", "/traces", body, trust_domain=trust_domain)
