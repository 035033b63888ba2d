"""The GUI as a Starlette app: four pages, their live fragments, their JSON, and the OTLP receiver.

Routes (all GET unless said):
- `/topology`, `/workloads`, `/policy`, `/traces`, `/traces/{id}`: whole pages (`/` redirects).
- `/fragments/...`: the part of a page that htmx swaps in every 2 s (no page reloads).
- `/api/topology`, `/api/workloads`, `/api/policy`, `/api/policy/explain?source=&destination=&method=&path=`,
  `/api/traces[?limit=N]`, `/api/traces/{id}`: the JSON each page is rendered from.
- `POST /v1/traces`: OTLP/HTTP protobuf, the receiver of `trustmesh.tracing.otlp_receiver`, so the
  GUI shows traces and topology with no collector running.

Plain HTTP without authentication: it is meant for loopback (see `listener.py` for the Host check
that keeps other web pages in the operator's browser from reading it through DNS rebinding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trustmesh.control.gui.pages import policy, topology, traces, workloads
from trustmesh.control.gui.sources import GuiSources
from trustmesh.tracing.otlp_receiver import otlp_app

log = structlog.get_logger(__name__)

# Same-origin scripts only (all vendored); inline styles are allowed because cytoscape and the
# waterfall bars position elements with them.
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class _SecurityHeaders:
    """Adds `_SECURITY_HEADERS` to every response (static files get caching back below)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                for name, value in _SECURITY_HEADERS.items():
                    if static and name == "cache-control":
                        value = "public, max-age=300"
                    headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_gui_app(sources: GuiSources, *, allowed_hosts: Sequence[str] = ("*",)) -> Starlette:
    """The GUI for one control plane. `allowed_hosts` is what the Host header may name."""
    td = sources.trust_domain

    def html(render: Callable[[], str]) -> Response:
        return HTMLResponse(render())

    async def root(request: Request) -> Response:
        return RedirectResponse("/topology", status_code=307)

    async def topology_page(request: Request) -> Response:
        d = await topology.data(sources)
        return html(lambda: topology.render_page(d, td))

    async def topology_fragment(request: Request) -> Response:
        d = await topology.data(sources)
        return html(lambda: topology.render_table(d))

    async def topology_api(request: Request) -> Response:
        return JSONResponse(await topology.data(sources))

    async def workloads_page(request: Request) -> Response:
        d = await workloads.data(sources)
        return html(lambda: workloads.render_page(d, td))

    async def workloads_fragment(request: Request) -> Response:
        d = await workloads.data(sources)
        return html(lambda: workloads.render_table(d))

    async def workloads_api(request: Request) -> Response:
        return JSONResponse(await workloads.data(sources))

    async def policy_page(request: Request) -> Response:
        d = await policy.data(sources)
        return html(lambda: policy.render_page(d, td))

    async def policy_status_fragment(request: Request) -> Response:
        d = await policy.data(sources)
        return html(lambda: policy.render_status(d))

    async def policy_decisions_fragment(request: Request) -> Response:
        d = await policy.data(sources)
        return html(lambda: policy.render_decisions(d))

    async def policy_api(request: Request) -> Response:
        return JSONResponse(await policy.data(sources))

    async def _explain(request: Request) -> tuple[dict[str, Any] | None, str | None]:
        q = request.query_params
        try:
            result = policy.explain(
                sources,
                await sources.registrations(),
                q.get("source", ""),
                q.get("destination", ""),
                q.get("method", ""),
                q.get("path", ""),
            )
        except policy.ExplainInputError as exc:
            return None, str(exc)
        log.info("gui_explain", source=result["source"], destination=result["destination"],
                 decision=result["decision"], policy=result["policy"], rule=result["rule"])
        return result, None

    async def explain_fragment(request: Request) -> Response:
        result, error = await _explain(request)
        return html(lambda: policy.render_explain(result, error))

    async def explain_api(request: Request) -> Response:
        result, error = await _explain(request)
        if error is not None:
            return JSONResponse({"error": "invalid_request", "detail": error}, status_code=400)
        return JSONResponse(result)

    async def traces_page(request: Request) -> Response:
        d = traces.recent_data(sources)
        return html(lambda: traces.render_page(d, td))

    async def traces_fragment(request: Request) -> Response:
        d = traces.recent_data(sources)
        return html(lambda: traces.render_recent(d))

    def _trace_id(request: Request) -> str | None:
        trace_id = str(request.path_params["trace_id"]).lower()
        return trace_id if traces.TRACE_ID.match(trace_id) else None

    async def trace_page(request: Request) -> Response:
        trace_id = _trace_id(request)
        if trace_id is None:
            return HTMLResponse("trace ids are 32 hex digits\n", status_code=404)
        d = traces.waterfall_data(sources, trace_id)
        return html(lambda: traces.render_trace_page(d, trace_id, td))

    async def trace_fragment(request: Request) -> Response:
        trace_id = _trace_id(request)
        d = traces.waterfall_data(sources, trace_id) if trace_id is not None else None
        if d is None:
            return HTMLResponse('<p class="empty">Trace not found (or evicted).</p>')
        return html(lambda: traces.render_waterfall(d))

    async def metrics(request: Request) -> Response:
        # The control plane's own metrics (issued SVIDs by method, connected sidecars, push
        # latency, ignored stream messages), for Prometheus to scrape beside the GUI.
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    receiver = otlp_app(sources.traces)
    static = StaticFiles(directory=str(files("trustmesh.control.gui").joinpath("static")))
    routes: list[BaseRoute] = [
        Route("/", root),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/topology", topology_page),
        Route("/workloads", workloads_page),
        Route("/policy", policy_page),
        Route("/traces", traces_page),
        Route("/traces/{trace_id}", trace_page),
        Route("/fragments/topology", topology_fragment),
        Route("/fragments/workloads", workloads_fragment),
        Route("/fragments/policy/status", policy_status_fragment),
        Route("/fragments/policy/decisions", policy_decisions_fragment),
        Route("/fragments/policy/explain", explain_fragment),
        Route("/fragments/traces", traces_fragment),
        Route("/fragments/traces/{trace_id}", trace_fragment),
        Route("/api/topology", topology_api),
        Route("/api/workloads", workloads_api),
        Route("/api/policy", policy_api),
        Route("/api/policy/explain", explain_api),
        # POST /v1/traces, GET /api/traces, GET /api/traces/{trace_id}: the receiver's own routes.
        *receiver.routes,
        Mount("/static", app=static, name="static"),
    ]

    async def on_bug(request: Request, exc: Exception) -> Response:
        log.error("gui_internal_error", path=request.url.path, error=type(exc).__name__, exc_info=exc)
        return JSONResponse({"error": "internal", "detail": "internal server error"}, status_code=500)

    return Starlette(
        routes=routes,
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
            Middleware(_SecurityHeaders),
        ],
        exception_handlers={Exception: on_bug},
    )


__all__ = ["build_gui_app"]
