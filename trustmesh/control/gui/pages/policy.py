"""Policy: the active revision, its files and policies, the last refused commit, recent decisions
and an explain form.

Decisions come from the sidecars' SERVER spans (`trustmesh.policy.decision`/`.revision`). A span
does not (yet) name the deciding rule; when its revision is the active one, the rule is recomputed
with the active `PolicyEngine` (decisions are pure functions of revision and request, so this is the
rule that decided) and shown as such; for an older revision it is left blank rather than guessed.
"""

from __future__ import annotations

from typing import Any

from trustmesh.control.gui.layout import esc, iso_from_ns, page, short_sha
from trustmesh.control.gui.observations import DecisionRecord
from trustmesh.control.gui.sources import GuiSources
from trustmesh.policy.engine import PolicyEngine

# The explain form takes short inputs; anything longer is a mistake or an attack on the cache.
MAX_FIELD = 512
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "")


# The deciding "rule" when no rule decided (see trustmesh.policy.engine).
_REASONS = {
    "default-deny": "no ALLOW rule matched",
    "no-allow-policy": "no ALLOW policy selects this workload",
    "ambiguous-path": "the path is ambiguous (refused before any rule)",
}


class ExplainInputError(ValueError):
    """An explain field the form cannot use; the message says which and why."""


def _ids_by_service(registrations: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spiffe_id, service in sorted(registrations.items()):
        out.setdefault(service, spiffe_id)
    return out


def _resolve(text: str, field: str, sources: GuiSources, registrations: dict[str, str]) -> str:
    """A SPIFFE ID as given, or the SPIFFE ID registered for a service name."""
    text = text.strip()
    if not text:
        raise ExplainInputError(f"{field} is required")
    if len(text) > MAX_FIELD:
        raise ExplainInputError(f"{field} is longer than {MAX_FIELD} characters")
    if text.startswith("spiffe://"):
        return text
    found = _ids_by_service(registrations).get(text)
    if found is None:
        raise ExplainInputError(f"{field} {text!r} is neither a SPIFFE ID nor a registered service")
    return found


def explain(
    sources: GuiSources, registrations: dict[str, str], source: str, destination: str, method: str, path: str
) -> dict[str, Any]:
    """The active engine's answer for one request, with the inputs as resolved."""
    watcher = sources.policy
    if watcher is None or watcher.active is None:
        raise ExplainInputError("no policy revision is active (the control plane follows no policy source)")
    source_id = _resolve(source, "source", sources, registrations)
    destination_id = _resolve(destination, "destination", sources, registrations)
    method = method.strip().upper()
    if method not in METHODS:
        raise ExplainInputError(f"method {method!r} is not one of {', '.join(m for m in METHODS if m)}")
    path = path.strip()
    if len(path) > MAX_FIELD:
        raise ExplainInputError(f"path is longer than {MAX_FIELD} characters")
    decision = watcher.active.engine.decide(source_id, destination_id, method or None, path or None)
    return {"source": source_id, "destination": destination_id, "method": method or None,
            "path": path or None, **decision.to_json()}


def _decision_json(
    record: DecisionRecord, engine: PolicyEngine | None, ids: dict[str, str], services: dict[str, str]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": iso_from_ns(record.time_unix_nano),
        "trace_id": record.trace_id,
        "source": record.source_id,
        "source_service": services.get(record.source_id or ""),
        "destination": record.destination,
        "method": record.method,
        "path": record.path,
        "decision": record.decision,
        "revision": record.revision,
        "status": record.status,
        "policy": record.policy,
        "rule": record.rule,
        "reason": record.reason,
        "location": record.location,
        "rule_from": "span" if record.policy is not None or record.reason is not None else None,
    }
    destination_id = ids.get(record.destination)
    if (
        out["rule_from"] is None
        and engine is not None
        and record.source_id is not None
        and destination_id is not None
        and record.revision == engine.revision.id
    ):
        again = engine.decide(record.source_id, destination_id, record.method, record.path)
        if again.decision == record.decision:
            out.update(policy=again.policy, rule=again.rule, reason=again.reason, location=again.location,
                       rule_from="active-revision")
    return out


async def data(sources: GuiSources, limit: int = 50) -> dict[str, Any]:
    registrations = await sources.registrations()
    ids = _ids_by_service(registrations)
    watcher = sources.policy
    engine = watcher.active.engine if watcher is not None and watcher.active is not None else None
    status: dict[str, Any] = (
        dict(watcher.to_json()) if watcher is not None
        else {"source": None, "active": None, "last_refused": None}
    )
    # Spans arrive in per-sidecar batches, so arrival order is not time order.
    records = sorted(sources.observations.decisions(limit), key=lambda r: r.time_unix_nano, reverse=True)
    status["decisions"] = [_decision_json(r, engine, ids, registrations) for r in records]
    status["services"] = sorted(ids)
    return status


def _rule_text(d: dict[str, Any]) -> str:
    if d.get("policy"):
        where = f' <code class="muted">{esc(d["location"])}</code>' if d.get("location") else ""
        return f"<b>{esc(d['policy'])}</b> rule {esc(d['rule'])}{where}"
    reason = d.get("reason")
    if reason is None:
        return '<span class="muted">—</span>'
    return f'<i>{esc(reason)}</i> <span class="muted">{esc(_REASONS.get(reason, ""))}</span>'


def _policy_row(p: dict[str, Any]) -> str:
    if p["kind"] == "AuthorizationPolicy":
        action = str(p["action"])
        selects = ", ".join((p.get("selector") or {}).get("spiffeIds", ["*"]))
    else:  # TrafficPolicy: settings for one service
        action, selects = "TRAFFIC", str(p.get("service"))
    return (
        f"<tr><td>{esc(p['name'])}</td><td>{esc(p['kind'])}</td>"
        f'<td><span class="badge {"deny" if action == "DENY" else "allow"}">{esc(action)}</span></td>'
        f"<td><code>{esc(selects)}</code></td><td>{len(p.get('rules', []))}</td>"
        f"<td><code>{esc(p['file'])}:{esc(p['line'])}</code></td></tr>"
    )


def render_status(d: dict[str, Any]) -> str:
    active = d.get("active")
    if active is None:
        head = '<p class="empty">No policy revision active: every workload is at default deny.</p>'
    else:
        files = ", ".join(f"<code>{esc(f)}</code>" for f in active["files"])
        policies = "".join(_policy_row(p) for p in active["policies"])
        head = (
            f'<h2>Active revision</h2><p><code id="active-revision" title="{esc(active["revision"])}">'
            f'{esc(short_sha(active["revision"]))}</code> '
            f'<span id="active-message">{esc(active["message"] or "")}</span> <span class="muted">'
            f'activated {esc(active["activated_at"])} from {esc(d.get("source"))}</span></p>'
            f'<p class="muted">Files: {files}</p>'
            "<table id=policies><thead><tr><th>name</th><th>kind</th><th>action</th>"
            f"<th>selects</th><th>rules</th><th>where</th></tr></thead><tbody>{policies}</tbody></table>"
        )
    refused = d.get("last_refused")
    if refused is None:
        tail = '<h2>Last refused commit</h2><p class="muted">None: every commit so far was valid.</p>'
    else:
        problems = "".join(
            f"<li><code>{esc(p['file'])}:{esc(p['line'])}</code>: {esc(p['message'])}</li>"
            for p in refused["problems"]
        )
        tail = (
            f'<h2>Last refused commit</h2><div id="last-refused"><p><code title="{esc(refused["revision"])}">'
            f'{esc(short_sha(refused["revision"]))}</code> {esc(refused["message"] or "")} '
            f'<span class="muted">refused {esc(refused["refused_at"])}; '
            "the revision above stayed active</span></p>"
            f'<ul class="problems">{problems}</ul></div>'
        )
    return f'<div class="layout-2"><div>{head}</div><div>{tail}</div></div>'


def render_decisions(d: dict[str, Any]) -> str:
    decisions = d["decisions"][:20]  # the page shows the newest 20; /api/policy has 50
    if not decisions:
        return '<p class="empty">No decisions reported yet (they come from the sidecars\' SERVER spans).</p>'
    rows = "".join(
        f'<tr class="decision" data-decision="{esc(x["decision"])}">'
        f'<td class="mono">{esc(x["time"][11:23])}</td>'
        f'<td title="{esc(x["source"])}">{esc(x["source_service"] or x["source"])}</td>'
        f"<td>{esc(x['destination'])}</td>"
        f"<td><code>{esc(x['method'])} {esc(x['path'])}</code></td>"
        f'<td><span class="badge {esc(x["decision"].lower())}">{esc(x["decision"])}</span></td>'
        f"<td>{_rule_text(x)}</td><td><code>{esc(short_sha(x['revision']))}</code></td></tr>"
        for x in decisions
    )
    return (
        "<table id=decisions><thead><tr><th>time (UTC)</th><th>caller</th><th>callee</th><th>request</th>"
        f"<th>decision</th><th>deciding rule</th><th>revision</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def render_explain(result: dict[str, Any] | None, error: str | None) -> str:
    if error is not None:
        return f'<p class="badge error" id="explain-error">{esc(error)}</p>'
    if result is None:
        return ""
    verdict = result["decision"]
    return (
        f'<div id="explain-answer"><span class="badge {esc(verdict.lower())}">{esc(verdict)}</span> '
        f"<code>{esc(result['source'])}</code> → <code>{esc(result['destination'])}</code> "
        f"<code>{esc(result['method'])} {esc(result['path'])}</code>: {_rule_text(result)} "
        f'<span class="muted">(reason {esc(result["reason"])}, '
        f"revision {esc(short_sha(result['revision']))})</span></div>"
    )


def render_page(d: dict[str, Any], trust_domain: str) -> str:
    options = "".join(f'<option value="{esc(s)}">' for s in d["services"])
    methods = "".join(f'<option value="{m}">{m or "(TCP)"}</option>' for m in METHODS)
    body = (
        '<section class="card"><div id="policy-live" hx-get="/fragments/policy/status" hx-trigger="every 2s" '
        f'hx-swap="innerHTML">{render_status(d)}</div></section>'
        '<section class="card"><h2>Explain a request</h2>'
        '<form class="explain" hx-get="/fragments/policy/explain" hx-target="#explain-result" '
        'hx-swap="innerHTML">'
        '<label>source (service or SPIFFE ID)<input name="source" list="services" required></label>'
        '<label>destination<input name="destination" list="services" required></label>'
        f'<label>method<select name="method">{methods}</select></label>'
        '<label>path<input name="path" value="/"></label>'
        f'<button type="submit">Explain</button></form><datalist id="services">{options}</datalist>'
        '<div id="explain-result"></div></section>'
        '<section class="card"><h2>Recent decisions</h2>'
        '<div id="decisions-live" hx-get="/fragments/policy/decisions" '
        f'hx-trigger="every 2s" hx-swap="innerHTML">{render_decisions(d)}</div></section>'
    )
    return page("Policy", "/policy", body, trust_domain=trust_domain)
