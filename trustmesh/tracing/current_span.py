"""Which request span is current in this task: what log events take their trace id from.

Why not OpenTelemetry's context: `context.attach` copies the whole context dict and `detach`
validates a token, for every span entered; the sidecar enters two or three spans per request and
nothing in it reads the OTel context except the log processor. A contextvar of our own holding
the span's `SpanContext` is a pointer swap. The control plane's spans keep OTel's context (they
are few), and `trustmesh.tracing.logs` reads this first, then OTel's.

OpenTelemetry is never imported here: the sidecar without tracing loads none of it.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

current_span_context: ContextVar[SpanContext | None] = ContextVar("trustmesh_span_context", default=None)


def enter_span(context: SpanContext) -> Token[SpanContext | None]:
    """Make `context` current; give the token back to `leave_span`."""
    return current_span_context.set(context)


def leave_span(token: Token[SpanContext | None]) -> None:
    """Restore what was current before `enter_span` returned `token`.

    A token from another task's context cannot be reset (ValueError): then the span that task
    entered is simply no longer current here, which is what leaving means.
    """
    try:
        current_span_context.reset(token)
    except ValueError:
        current_span_context.set(token.old_value if token.old_value is not Token.MISSING else None)
