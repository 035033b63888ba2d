"""What a sidecar reports about each request: its span, its `access` log event, its metrics.

Shared by inbound and outbound (like `exchange`): each proxy calls `begin_*` when a request
head arrives, fills in the `Exchange` as the request goes (status, error code, upstream), and
calls `end` once it is answered, whatever the path (a relayed response, a sidecar error, a
cancelled request).

Tracing is optional and *lazy*: with no OTLP endpoint the sidecar never imports OpenTelemetry
(memory, start-up), `tracer` is None, and a request costs a scan for `x-request-id`, one access
event and two metric updates. With tracing on, `trustmesh.tracing.spans` makes the spans and the
`traceparent` the next hop continues from.

Every request has one `x-request-id` (kept when the caller sent a sane one, else generated): it
is what the app and the next sidecar receive, what the access log, the span and every error
body the sidecar writes carry, so one id finds a request everywhere.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final, Literal

from trustmesh.sidecar.http.errors import error_response
from trustmesh.sidecar.http.parser import RequestHead
from trustmesh.tracing.logs import access_log, level_enabled
from trustmesh.tracing.metrics import SidecarMetrics
from trustmesh.tracing.request_id import REQUEST_ID_HEADER, find_request_id, new_request_id

if TYPE_CHECKING:
    from trustmesh.sidecar.inbound.authorize import AuthzDecision
    from trustmesh.tracing.spans import MeshTracer, OutboundRequest, RequestSpan

Direction = Literal["inbound", "outbound"]

_RID_ONLY: Final = frozenset({REQUEST_ID_HEADER})
_NONE: Final[frozenset[bytes]] = frozenset()


def service_from_spiffe_id(spiffe_id: str) -> str:
    """The default mesh service name: the SPIFFE ID's last path segment (`…/sa/orders` → `orders`)."""
    return spiffe_id.rstrip("/").rsplit("/", 1)[-1]


def _path(target: bytes) -> str:
    """The path without its query (a query can carry secrets; it is never logged)."""
    q = target.find(b"?")
    return (target if q < 0 else target[:q]).decode("latin-1")


class Exchange:
    """One request's record from head to answer; the proxies set `status`, `error_code`, `upstream`."""

    __slots__ = (
        "attempts",
        "bytes_received",
        "direction",
        "error_code",
        "head",
        "outbound",
        "peer",
        "request_id",
        "span",
        "started",
        "status",
        "upstream",
    )

    def __init__(self, direction: Direction, head: RequestHead, request_id: str) -> None:
        self.direction: Direction = direction
        self.head = head
        self.request_id = request_id
        self.started = time.perf_counter()
        self.status = 0  # 0: no answer was sent (the caller went away, or the request was cancelled)
        self.error_code: str | None = None
        self.upstream: str | None = None
        self.peer: str | None = None
        self.attempts: int | None = None
        self.bytes_received = head.content_length or 0
        self.span: RequestSpan | None = None  # inbound SERVER span, when tracing
        self.outbound: OutboundRequest | None = None  # outbound request context, when tracing

    def fail(self, status: int, code: str) -> None:
        self.status = status
        self.error_code = code

    def error_response(self, status: int, code: str, *, close: bool = True) -> bytes:
        """A sidecar-made answer (`x-trustmesh-error`) naming this request's id in header and body."""
        self.fail(status, code)
        return error_with_request_id(status, code, self.request_id, close=close)


def error_with_request_id(status: int, code: str, request_id: str, *, close: bool) -> bytes:
    rid = request_id.encode("ascii")
    body = code.encode("ascii") + b": request " + rid + b"\n"
    response = error_response(status, code, close=close, body=body)
    return response.replace(b"\r\n\r\n", b"\r\nx-request-id: " + rid + b"\r\n\r\n", 1)


class Telemetry:
    """One sidecar's span factory (optional), metrics and access log, shared by every listener."""

    def __init__(self, metrics: SidecarMetrics, *, service: str, tracer: MeshTracer | None = None) -> None:
        self.metrics = metrics
        self.service = service
        self.tracer = tracer

    # -- request ids without tracing ------------------------------------------------------------

    @staticmethod
    def _request_id(head: RequestHead) -> tuple[str, frozenset[bytes], bytes]:
        """(id, fields to strip, fields to add): keep a sane x-request-id, else replace it."""
        found, present = find_request_id(head.headers)
        if found is not None:
            return found.decode("ascii"), _NONE, b""
        rid = new_request_id()
        return (
            rid.decode("ascii"),
            (_RID_ONLY if present else _NONE),
            REQUEST_ID_HEADER + b": " + rid + b"\r\n",
        )

    # -- inbound --------------------------------------------------------------------------------

    def begin_inbound(
        self,
        head: RequestHead,
        *,
        peer_spiffe_id: str,
        peer_address: tuple[str, int] | None,
        server_address: str,
        server_port: int,
    ) -> tuple[Exchange, frozenset[bytes], bytes]:
        """Start a request received from a peer sidecar: (record, fields to strip, fields to add).

        With tracing on, the SERVER span is current from here to `end`, and the fields to add
        carry a `traceparent` naming it, so the app continues the trace.
        """
        tracer = self.tracer
        if tracer is None:
            rid, strip, add = self._request_id(head)
            ex = Exchange("inbound", head, rid)
        else:
            span = tracer.inbound(
                head.headers,
                method=head.method,
                target=head.target,
                peer_spiffe_id=peer_spiffe_id,
                peer_address=peer_address[0] if peer_address else None,
                peer_port=peer_address[1] if peer_address else None,
                server_address=server_address,
                server_port=server_port,
            )
            span.__enter__()
            ex = Exchange("inbound", head, span.request_id)
            ex.span = span
            strip, add = tracer.trace_headers, span.next_hop_fields()
        ex.peer = peer_spiffe_id
        return ex, strip, add

    def policy(self, ex: Exchange, decision: AuthzDecision) -> None:
        """Record the authorization outcome on the SERVER span (metrics count it in the authorizer).

        A policy-engine `Decision` also names its revision and rule; a plain authorizer's does not.
        """
        span = ex.span
        if span is not None:
            span.set_policy(
                "allow" if decision.allowed else "deny",
                getattr(decision, "revision", None),
                policy=getattr(decision, "policy", None),
                rule=getattr(decision, "rule", None),
                reason=decision.reason,
                location=getattr(decision, "location", None),
            )

    # -- outbound -------------------------------------------------------------------------------

    def begin_outbound(self, head: RequestHead, service: str) -> tuple[Exchange, frozenset[bytes], bytes]:
        """Start a request from the local app to `service`: (record, fields to strip, fields to add).

        With tracing on, nothing is added here: each attempt adds its own `traceparent`
        (`attempt_fields`), and the trace fields the app sent are stripped.
        """
        tracer = self.tracer
        if tracer is None:
            rid, strip, add = self._request_id(head)
            return Exchange("outbound", head, rid), strip, add
        request = tracer.outbound(head.headers, method=head.method, target=head.target, service=service)
        request.__enter__()
        ex = Exchange("outbound", head, request.request_id)
        ex.outbound = request
        return ex, tracer.trace_headers, b""

    def attempt(
        self, ex: Exchange, *, host: str, port: int, peer_spiffe_id: str, attempt: int
    ) -> tuple[RequestSpan | None, bytes]:
        """A CLIENT span for one try (None without tracing) and the fields that name it upstream.

        The span is entered (current) here; the caller ends it with `end_attempt`.
        """
        request = ex.outbound
        if request is None:
            return None, b""
        span = request.attempt(
            endpoint_address=host, endpoint_port=port, peer_spiffe_id=peer_spiffe_id, attempt=attempt
        )
        span.__enter__()
        return span, span.next_hop_fields()

    @staticmethod
    def end_attempt(span: RequestSpan | None, status: int, error_code: str | None = None) -> None:
        if span is not None:
            span.finish(status, error_code=error_code)
            span.__exit__(None, None, None)

    # -- both -----------------------------------------------------------------------------------

    def end(self, ex: Exchange, *, service: str | None = None) -> None:
        """The request is answered (or abandoned): access log inside the span, metrics, span ended."""
        duration = time.perf_counter() - ex.started
        head = ex.head
        status = ex.status
        service = service if service is not None else self.service
        span = ex.span
        if span is not None:
            span.finish(status, error_code=ex.error_code)
            if ex.upstream is not None:
                span.set_upstream(ex.upstream)
        if level_enabled(logging.INFO):  # else skip building the event's fields, per request
            access_log(
                direction=ex.direction,
                method=head.method.decode("latin-1"),
                path=_path(head.target),
                status=status,
                duration_s=duration,
                request_id=ex.request_id,
                bytes_received=ex.bytes_received,
                peer_spiffe_id=ex.peer,
                upstream=ex.upstream,
                error_code=ex.error_code,
                service=service,
                attempts=ex.attempts,
            )
        self.metrics.observe_request(
            ex.direction, peer=ex.peer, service=service, status=status, duration_s=duration
        )
        if span is not None:
            span.__exit__(None, None, None)
        elif ex.outbound is not None:
            ex.outbound.finish(status, error_code=ex.error_code)
            ex.outbound.__exit__(None, None, None)
