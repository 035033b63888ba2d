"""Request spans started without the SDK's general-purpose `Tracer.start_span`.

Why: the sidecar starts two or three spans per request, and the SDK path costs ~40 µs each on
our build machines: it validates and copies every attribute into a `BoundedAttributes`, asks the
sampler through a `Context`, and on `end()` copies the span into a new `ReadableSpan` for the
processors. Our attributes are already clean (str and int, set by `trustmesh.tracing.spans`), so
`HotSpan` is the live span and its own readable record at once: a plain dict of attributes, the
same `SpanContext`/sampling decisions as the SDK, and `end()` hands itself to the tracer's span
processors (the BatchSpanProcessor: a deque append).

Only the sidecar's request spans go through here; control-plane spans keep the SDK's path.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import Attributes, AttributeValue

from trustmesh.tracing.batch_append import span_sink

UNSET_STATUS: Final = Status(StatusCode.UNSET)  # every span's status until set: `otlp_wire` knows it
_EMPTY_STATE: Final = TraceState()
# Root spans: sampled or not, and W3C level 2's "random trace id" bit (the SDK sets it too).
_SAMPLED_RANDOM: Final = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_UNSAMPLED_RANDOM: Final = TraceFlags(TraceFlags.RANDOM_TRACE_ID)
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_UNSAMPLED: Final = TraceFlags(TraceFlags.DEFAULT)
_getrandbits: Final = random.getrandbits
_ID_LIMIT: Final = TraceIdRatioBased.TRACE_ID_LIMIT  # the low 64 bits a ratio sampler reads
_time_ns: Final = time.time_ns


class HotSpan(ReadableSpan, Span):
    """A recording span that is also its own `ReadableSpan` (nothing is copied on `end`)."""

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        recorder: Recorder,
    ) -> None:
        # ReadableSpan's fields, set directly: its __init__ would copy them.
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._events: list[Event] = []
        self._links = ()
        self._resource = recorder.resource
        self._instrumentation_scope = recorder.scope
        self._instrumentation_info = None
        self._status = UNSET_STATUS
        self._start_time = _time_ns()
        self._end_time: int | None = None
        self._sink = recorder.ended

    # -- opentelemetry.trace.Span --------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]  # always set in __init__

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end_time is None:
            self._attributes[key] = value  # type: ignore[index]

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)  # type: ignore[union-attr]

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            self._events.append(Event(name, attributes, timestamp))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final, UNSET is ignored.
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module, qualname = type(exception).__module__, type(exception).__qualname__
        event: dict[str, AttributeValue] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else _time_ns()
        self._sink(self)

    # ReadableSpan's `events` returns a tuple of `_events`: a list here, so that works unchanged.
    @property
    def links(self) -> Sequence[trace.Link]:
        return ()


class Recorder:
    """What starting a span needs from one SDK tracer: sampler, resource, scope, processors."""

    __slots__ = (
        "_follow_parent",
        "_on_start",
        "_root_bound",
        "ended",
        "processor",
        "resource",
        "sampler",
        "scope",
    )

    def __init__(
        self, processor: SpanProcessor, resource: Resource, sampler: Sampler, scope: InstrumentationScope
    ) -> None:
        self.processor = processor
        # `ended`: where `HotSpan.end` puts the span (see batch_append). With the fast append, on_start
        # is skipped too: the one processor is the BatchSpanProcessor, whose on_start does nothing.
        fast = span_sink(processor)
        self.ended: Callable[[ReadableSpan], None] = fast or processor.on_end
        self._on_start = None if fast is not None else processor.on_start
        self.resource = resource
        self.sampler = sampler
        self.scope = scope
        # OTel's default ParentBased (what `setup.build_sampler` makes): a parent's sampled flag
        # decides, and the root sampler is asked only for new traces.
        self._follow_parent = isinstance(sampler, ParentBased) and (
            getattr(sampler, "_remote_parent_sampled", None) is ALWAYS_ON
            and getattr(sampler, "_remote_parent_not_sampled", None) is ALWAYS_OFF
            and getattr(sampler, "_local_parent_sampled", None) is ALWAYS_ON
            and getattr(sampler, "_local_parent_not_sampled", None) is ALWAYS_OFF
        )
        # New traces under that default: ALWAYS_ON, ALWAYS_OFF or a trace-id ratio root sampler
        # decides from the trace id alone (the SDK's own rule, `trace_id & limit < bound`), so
        # the root decision needs no `Context` and no `SamplingResult`. None: ask the sampler.
        root = getattr(sampler, "_root", None) if self._follow_parent else None
        self._root_bound: int | None = None
        if root is ALWAYS_ON:
            self._root_bound = _ID_LIMIT + 1
        elif root is ALWAYS_OFF:
            self._root_bound = 0
        elif type(root) is TraceIdRatioBased:
            self._root_bound = root.bound

    @classmethod
    def for_tracer(cls, tracer: trace.Tracer) -> Recorder | None:
        """A recorder for an SDK tracer; None for anything else (the caller keeps `start_span`)."""
        if type(tracer) is not SdkTracer:
            return None
        # The SDK's Tracer keeps these as attributes; if a future SDK renames them, the caller
        # falls back to `start_span`, slower but the same spans.
        processor = getattr(tracer, "span_processor", None) or getattr(tracer, "_span_processor", None)
        scope = getattr(tracer, "_instrumentation_scope", None)
        is_enabled = getattr(tracer, "_is_enabled", None)
        if processor is None or scope is None or (is_enabled is not None and not is_enabled()):
            return None
        return cls(processor, tracer.resource, tracer.sampler, scope)

    def start(
        self, name: str, parent: SpanContext | None, kind: SpanKind, attributes: dict[str, AttributeValue]
    ) -> Span:
        """Start a span (child of `parent`, or a new trace): a `HotSpan`, or non-recording if unsampled."""
        span_id = _getrandbits(64) or 1  # never the invalid id 0
        if parent is None and self._root_bound is not None:
            trace_id = _getrandbits(128) or 1
            flags = _SAMPLED_RANDOM if trace_id & _ID_LIMIT < self._root_bound else _UNSAMPLED_RANDOM
            context = SpanContext(trace_id, span_id, False, flags, _EMPTY_STATE)
        elif parent is not None and self._follow_parent:
            flags = _SAMPLED if parent.trace_flags.sampled else _UNSAMPLED
            if parent.trace_flags.random_trace_id:
                flags = TraceFlags(flags | TraceFlags.RANDOM_TRACE_ID)
            context = SpanContext(parent.trace_id, span_id, False, flags, parent.trace_state)
        else:
            trace_id = parent.trace_id if parent is not None else (_getrandbits(128) or 1)
            parent_ctx = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
            result = self.sampler.should_sample(parent_ctx, trace_id, name, kind, attributes)
            sampled = result.decision.is_sampled()  # type: ignore[no-untyped-call]
            if parent is None:
                flags = _SAMPLED_RANDOM if sampled else _UNSAMPLED_RANDOM
            else:
                flags = _SAMPLED if sampled else _UNSAMPLED
            context = SpanContext(trace_id, span_id, False, flags, result.trace_state or _EMPTY_STATE)
            if result.attributes:
                attributes.update(result.attributes)
        if not context.trace_flags.sampled:
            return NonRecordingSpan(context)
        span = HotSpan(name, context, parent, kind, attributes, self)
        if self._on_start is not None:
            self._on_start(span, parent_context=None)  # type: ignore[arg-type]  # SDK types it as its own Span
        return span
