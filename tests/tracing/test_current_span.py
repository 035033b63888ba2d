"""The current request span, as log events see it (`trustmesh.tracing.current_span`)."""

from __future__ import annotations

import contextvars

from opentelemetry.trace import SpanContext, TraceFlags

from trustmesh.tracing.current_span import current_span_context, enter_span, leave_span
from trustmesh.tracing.logs import add_trace_context

OUTER = SpanContext(0xA1, 0xB1, is_remote=False, trace_flags=TraceFlags(1))
INNER = SpanContext(0xA1, 0xB2, is_remote=False, trace_flags=TraceFlags(1))


def test_nested_spans_restore_the_outer_one() -> None:
    outer = enter_span(OUTER)
    inner = enter_span(INNER)
    assert add_trace_context(None, "info", {})["span_id"] == f"{0xB2:016x}"
    leave_span(inner)
    assert add_trace_context(None, "info", {}) == {"trace_id": f"{0xA1:032x}", "span_id": f"{0xB1:016x}"}
    leave_span(outer)
    assert current_span_context.get() is None
    assert "trace_id" not in add_trace_context(None, "info", {})


def test_leaving_in_another_context_does_not_raise() -> None:
    """A span entered in one task and ended in another: no longer current there, and no error."""
    token = contextvars.copy_context().run(enter_span, INNER)
    other = contextvars.copy_context()
    other.run(enter_span, OUTER)
    other.run(leave_span, token)
    assert other.run(current_span_context.get) is None  # what was current before INNER was entered
