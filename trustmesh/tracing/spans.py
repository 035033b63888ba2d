"""The spans trustmesh records, with OpenTelemetry HTTP semantic-convention attributes.

Shape of one request app A -> sidecar A (outbound) -> sidecar B (inbound) -> app B:

    app A span (from the app's own traceparent, if it sent one)
    └── CLIENT  "GET"   sidecar A, one per attempt (retries are siblings, http.request.resend_count)
        └── SERVER  "GET"   sidecar B
            └── app B's spans (app B receives a traceparent naming the SERVER span)

When app A sent no trace context, sidecar A starts the trace with an INTERNAL span
"GET {service}" covering all attempts, so the attempts share one trace.

Every span is entered with `with`: while inside, it is the current span (`current_span`, a
contextvar of our own: OTel's context costs a dict copy per span), so structlog events carry its
`trace_id`/`span_id` (see `trustmesh.tracing.logs`). Cost when tracing is off or the
request is not sampled: no attributes are built beyond one small dict, nothing is queued.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Final, Literal

from opentelemetry import trace
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
)
from opentelemetry.util.types import AttributeValue

from trustmesh.tracing.current_span import enter_span, leave_span
from trustmesh.tracing.hot_span import Recorder
from trustmesh.tracing.propagation import (
    TRACE_HEADERS,
    Headers,
    IncomingContext,
    extract,
    inject,
    next_hop_fields,
)

# Attribute keys: OpenTelemetry HTTP semantic conventions (stable, v1.23+) and our own.
HTTP_METHOD: Final = "http.request.method"
HTTP_METHOD_ORIGINAL: Final = "http.request.method_original"
HTTP_STATUS: Final = "http.response.status_code"
HTTP_RESEND_COUNT: Final = "http.request.resend_count"
HTTP_ROUTE: Final = "http.route"
URL_PATH: Final = "url.path"
URL_SCHEME: Final = "url.scheme"
URL_FULL: Final = "url.full"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
CLIENT_ADDRESS: Final = "client.address"
NETWORK_PEER_ADDRESS: Final = "network.peer.address"
NETWORK_PEER_PORT: Final = "network.peer.port"
NETWORK_PROTOCOL_VERSION: Final = "network.protocol.version"
ERROR_TYPE: Final = "error.type"
PEER_SPIFFE_ID: Final = "trustmesh.peer.spiffe_id"
POLICY_DECISION: Final = "trustmesh.policy.decision"
POLICY_REVISION: Final = "trustmesh.policy.revision"
# Which rule decided (absent for a default deny), and why: what the GUI's decision list shows.
POLICY_NAME: Final = "trustmesh.policy.policy"
POLICY_RULE: Final = "trustmesh.policy.rule"
POLICY_REASON: Final = "trustmesh.policy.reason"
POLICY_LOCATION: Final = "trustmesh.policy.location"
UPSTREAM_ENDPOINT: Final = "trustmesh.upstream.endpoint"
REQUEST_ID: Final = "trustmesh.request_id"
MESH_SERVICE: Final = "trustmesh.service"
RESPONSE_BYTES: Final = "http.response.body.size"

# Semantic conventions: a method outside this set is recorded as `_OTHER` (bounded cardinality).
_METHODS: Final[dict[bytes, str]] = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
}


def _method_attributes(method: bytes, attributes: dict[str, AttributeValue]) -> str:
    known = _METHODS.get(method)
    if known is not None:
        attributes[HTTP_METHOD] = known
        return known
    original = method.decode("latin-1")
    attributes[HTTP_METHOD] = "_OTHER"
    attributes[HTTP_METHOD_ORIGINAL] = original
    return "HTTP"


def _path(target: bytes) -> str:
    """The path of a request target, query dropped: a query can carry secrets, and it is not recorded."""
    if not target.startswith(b"/"):
        # absolute-form (`http://host/p`): skip scheme and authority.
        scheme_end = target.find(b"://")
        if scheme_end >= 0:
            slash = target.find(b"/", scheme_end + 3)
            target = target[slash:] if slash >= 0 else b"/"
    q = target.find(b"?")
    return (target if q < 0 else target[:q]).decode("latin-1")


class RequestSpan:
    """One SERVER or CLIENT span of one request: enter it, forward headers, `finish(status)`.

    Usable as a context manager only once. An exception escaping the `with` marks the span ERROR
    (`error.type` = exception class) and ends it; the exception propagates.
    """

    __slots__ = ("_finished", "_kind", "_token", "incoming", "request_id", "span")

    def __init__(self, span: Span, kind: SpanKind, incoming: IncomingContext) -> None:
        self.span = span
        self.incoming = incoming
        self.request_id = incoming.request_id_str
        self._kind = kind
        self._token: object | None = None
        self._finished = False

    def __enter__(self) -> RequestSpan:
        self._token = enter_span(self.span.get_span_context())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and self.span.is_recording():
            self.span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            self.span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__qualname__))
            if isinstance(exc, Exception):  # not trio.Cancelled & co: those are not failures of this span
                self.span.record_exception(exc)
        if self._token is not None:
            leave_span(self._token)  # type: ignore[arg-type]  # enter_span() returned it
            self._token = None
        self.span.end()

    @property
    def trace_id(self) -> str | None:
        """32 hex digits, or None when tracing is off (to put in error bodies next to the request id)."""
        ctx = self.span.get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.is_valid else None

    def forward_headers(self, headers: Headers) -> Headers:
        """The request headers for the next hop: `traceparent` names this span; x-request-id kept/added."""
        return inject(headers, self.incoming, self.span.get_span_context())

    def next_hop_fields(self) -> bytes:
        """`forward_headers([])` as head bytes (`name: value` lines), for a proxy writing its own head."""
        return next_hop_fields(self.incoming, self.span.get_span_context())

    def set_policy(
        self,
        decision: str,
        revision: int | str | None,
        *,
        policy: str | None = None,
        rule: int | None = None,
        reason: str | None = None,
        location: str | None = None,
    ) -> None:
        """The inbound authorization outcome (`allow`/`deny`), the revision and the rule that decided."""
        span = self.span
        if span.is_recording():
            span.set_attribute(POLICY_DECISION, decision)
            if revision is not None:
                span.set_attribute(POLICY_REVISION, str(revision))
            if policy is not None:
                span.set_attribute(POLICY_NAME, policy)
            if rule is not None:
                span.set_attribute(POLICY_RULE, rule)
            if reason is not None:
                span.set_attribute(POLICY_REASON, reason)
            if location is not None:
                span.set_attribute(POLICY_LOCATION, location)

    def set_upstream(self, endpoint: str) -> None:
        """Where the request was sent (`host:port`); known late on the inbound side."""
        if self.span.is_recording():
            self.span.set_attribute(UPSTREAM_ENDPOINT, endpoint)

    def finish(
        self, status: int, *, error_code: str | None = None, response_bytes: int | None = None
    ) -> None:
        """Record the response. SERVER: ERROR for 5xx; CLIENT: ERROR for 4xx and 5xx (semconv).

        `error_code` is the sidecar's own failure code (`upstream_connect_failed`, `policy_denied`…);
        it becomes `error.type` and forces ERROR, since the sidecar itself failed the request.
        """
        self._finished = True
        span = self.span
        if not span.is_recording():
            return
        span.set_attribute(HTTP_STATUS, status)
        if response_bytes is not None:
            span.set_attribute(RESPONSE_BYTES, response_bytes)
        threshold = 500 if self._kind is SpanKind.SERVER else 400
        if error_code is not None:
            span.set_attribute(ERROR_TYPE, error_code)
            span.set_status(Status(StatusCode.ERROR, error_code))
        elif status >= threshold:
            span.set_attribute(ERROR_TYPE, str(status))
            span.set_status(Status(StatusCode.ERROR))


class OutboundRequest:
    """One request from the local app through the outbound sidecar; `attempt()` per try upstream.

    Entering it makes the app's context (or the sidecar's INTERNAL root span) current, so log
    events between attempts, and the access log, carry the request's trace id.
    """

    __slots__ = (
        "_method",
        "_off",
        "_parent_span",
        "_path",
        "_recorder",
        "_root",
        "_service",
        "_token",
        "_tracer",
        "incoming",
        "request_id",
    )

    def __init__(
        self,
        tracer: trace.Tracer,
        incoming: IncomingContext,
        *,
        method: bytes,
        target: bytes,
        service: str,
        recorder: Recorder | None = None,
        off: bool,
    ) -> None:
        self._tracer = tracer
        self._recorder = recorder
        self.incoming = incoming
        self.request_id = incoming.request_id_str
        self._method = method
        self._path = _path(target)
        self._service = service
        self._token: object | None = None
        self._root: RequestSpan | None = None
        # `off`: the MeshTracer's no-op check, made once (an isinstance against OTel's ABCs costs).
        self._off = off
        # The attempts' parent: the app's span, or the INTERNAL root below.
        self._parent_span: SpanContext | None = incoming.parent
        if self._parent_span is None and not self._off:
            # No parent from the app: one INTERNAL span so that every attempt lands in one trace.
            attributes: dict[str, AttributeValue] = {
                URL_PATH: self._path,
                MESH_SERVICE: service,
                REQUEST_ID: self.request_id,
            }
            name = f"{_method_attributes(method, attributes)} {service}"
            if recorder is not None:
                span = recorder.start(name, None, SpanKind.INTERNAL, attributes)
            else:
                span = tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
            self._root = RequestSpan(span, SpanKind.INTERNAL, incoming)
            self._parent_span = span.get_span_context()

    def __enter__(self) -> OutboundRequest:
        # Current from here, so log events between attempts carry the trace id.
        if self._parent_span is not None:
            self._token = enter_span(self._parent_span)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            leave_span(self._token)  # type: ignore[arg-type]  # enter_span() returned it
            self._token = None
        if self._root is not None:
            self._root.__exit__(exc_type, exc, tb)

    @property
    def trace_id(self) -> str | None:
        parent = self.incoming.parent
        if parent is not None:
            return f"{parent.trace_id:032x}"
        return self._root.trace_id if self._root is not None else None

    def attempt(
        self,
        *,
        endpoint_address: str,
        endpoint_port: int,
        peer_spiffe_id: str | None = None,
        attempt: int = 0,
    ) -> RequestSpan:
        """A CLIENT span for one try against one endpoint; `attempt` counts from 0 (the first try)."""
        if self._off:
            return RequestSpan(INVALID_SPAN, SpanKind.CLIENT, self.incoming)
        attributes: dict[str, AttributeValue] = {
            URL_PATH: self._path,
            URL_SCHEME: "https",
            URL_FULL: f"https://{endpoint_address}:{endpoint_port}{self._path}",
            SERVER_ADDRESS: endpoint_address,
            SERVER_PORT: endpoint_port,
            NETWORK_PEER_ADDRESS: endpoint_address,
            NETWORK_PEER_PORT: endpoint_port,
            NETWORK_PROTOCOL_VERSION: "1.1",
            UPSTREAM_ENDPOINT: f"{endpoint_address}:{endpoint_port}",
            MESH_SERVICE: self._service,
            REQUEST_ID: self.request_id,
        }
        if peer_spiffe_id is not None:
            attributes[PEER_SPIFFE_ID] = peer_spiffe_id
        if attempt > 0:
            attributes[HTTP_RESEND_COUNT] = attempt
        name = _method_attributes(self._method, attributes)
        kind = SpanKind.CLIENT
        if self._recorder is not None:
            span = self._recorder.start(name, self._parent_span, kind, attributes)
        else:
            parent = (
                trace.set_span_in_context(NonRecordingSpan(self._parent_span))
                if self._parent_span is not None
                else None
            )
            span = self._tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        return RequestSpan(span, kind, self.incoming)

    def finish(self, status: int, *, error_code: str | None = None) -> None:
        """The status the app finally got; recorded on the INTERNAL root span when there is one."""
        if self._root is not None:
            self._root.finish(status, error_code=error_code)


class MeshTracer:
    """The sidecar's span factory: one per sidecar process, shared by inbound and outbound."""

    def __init__(self, tracer: trace.Tracer, *, service: str) -> None:
        self._tracer = tracer
        self.service = service
        # With OTel's no-op tracer, skip attribute building entirely: requests cost one extract().
        self._off = isinstance(tracer, trace.NoOpTracer)
        # The SDK's tracer: request spans skip its general-purpose start_span (see hot_span).
        self._recorder = None if self._off else Recorder.for_tracer(tracer)
        # The fields a proxy strips from a head when it adds `next_hop_fields`.
        self.trace_headers = TRACE_HEADERS

    def inbound(
        self,
        headers: Headers,
        *,
        method: bytes,
        target: bytes,
        peer_spiffe_id: str | None,
        peer_address: str | None,
        peer_port: int | None,
        server_address: str,
        server_port: int,
        route: str | None = None,
    ) -> RequestSpan:
        """A SERVER span for one request received over mTLS; its parent is read from `headers`."""
        incoming = extract(headers)
        if self._off:
            return RequestSpan(INVALID_SPAN, SpanKind.SERVER, incoming)
        attributes: dict[str, AttributeValue] = {
            URL_PATH: _path(target),
            URL_SCHEME: "https",
            SERVER_ADDRESS: server_address,
            SERVER_PORT: server_port,
            NETWORK_PROTOCOL_VERSION: "1.1",
            MESH_SERVICE: self.service,
            REQUEST_ID: incoming.request_id_str,
        }
        if peer_address is not None:
            attributes[NETWORK_PEER_ADDRESS] = peer_address
            attributes[CLIENT_ADDRESS] = peer_address
        if peer_port is not None:
            attributes[NETWORK_PEER_PORT] = peer_port
        if peer_spiffe_id is not None:
            attributes[PEER_SPIFFE_ID] = peer_spiffe_id
        name = _method_attributes(method, attributes)
        if route is not None:
            attributes[HTTP_ROUTE] = route
            name = f"{name} {route}"
        if self._recorder is not None:
            span = self._recorder.start(name, incoming.parent, SpanKind.SERVER, attributes)
        else:
            span = self._tracer.start_span(
                name, context=incoming.otel_context(), kind=SpanKind.SERVER, attributes=attributes
            )
        return RequestSpan(span, SpanKind.SERVER, incoming)

    def outbound(self, headers: Headers, *, method: bytes, target: bytes, service: str) -> OutboundRequest:
        """The outbound side of one app request to `service`; call `.attempt(...)` per try."""
        return OutboundRequest(
            self._tracer,
            extract(headers),
            method=method,
            target=target,
            service=service,
            recorder=self._recorder,
            off=self._off,
        )


ControlOperation = Literal["join", "renew", "policy.activate"]


@contextmanager
def control_span(
    tracer: trace.Tracer, operation: ControlOperation, attributes: Mapping[str, AttributeValue] | None = None
) -> Iterator[Span]:
    """A control-plane span (`trustmesh.join`, `trustmesh.renew`, `trustmesh.policy.activate`).

    Current while inside, so the control plane's log events carry its trace id; an exception marks
    it ERROR and propagates. Suggested attributes: `trustmesh.spiffe_id`, `trustmesh.svid.serial`,
    `trustmesh.policy.revision`.
    """
    with tracer.start_as_current_span(
        f"trustmesh.{operation}",
        kind=SpanKind.INTERNAL,
        attributes=attributes,
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        yield span
