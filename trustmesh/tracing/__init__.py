"""OpenTelemetry set-up, trace-context propagation, structlog configuration, metrics."""
