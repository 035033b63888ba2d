"""Log configuration: one JSON object per line, stdlib records included, levels honoured."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog
import structlog.testing
from opentelemetry.trace import SpanContext

from trustmesh.tracing.current_span import enter_span, leave_span
from trustmesh.tracing.logs import access_log, configure_logging


@pytest.fixture
def reset() -> Iterator[None]:
    yield None
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "trustmesh"]:
        root.removeHandler(handler)


def test_json_lines_with_stdlib_records_and_level(reset: None) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    configure_logging("info", "json", stream=out)  # twice: still one line per event
    structlog.get_logger().debug("hidden")
    structlog.get_logger().info("svid_rotated", spiffe_id="spiffe://td/web", serial="0a")
    logging.getLogger("opentelemetry.sdk").warning("Queue full, dropping %s.", "span")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["svid_rotated", "Queue full, dropping span."]
    assert (
        lines[0]["spiffe_id"] == "spiffe://td/web" and lines[0]["level"] == "info" and "timestamp" in lines[0]
    )
    assert lines[1]["logger"] == "opentelemetry.sdk" and lines[1]["level"] == "warning"


def test_console_format_is_not_json(reset: None) -> None:
    out = io.StringIO()
    configure_logging("debug", "console", stream=out)
    structlog.get_logger().info("hello", peer="x")
    assert "hello" in out.getvalue() and not out.getvalue().startswith("{")


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="loud"):
        configure_logging("loud", "json", stream=io.StringIO())


ACCESS = dict(
    direction="inbound",
    method="GET",
    path="/items/7",
    status=200,
    duration_s=0.000413,
    request_id="0a12baac63139a3c46b5dec00b3c6c3c",
    bytes_received=12,
    bytes_sent=100,
    peer_spiffe_id="spiffe://example.org/ns/default/sa/web",
    upstream="127.0.0.1:9001",
    service="api",
)


def _structlogs_own_access_line(out: io.StringIO) -> str:
    """What structlog itself writes for the same event (the path access_log used to take)."""
    a = ACCESS
    structlog.get_logger("trustmesh.access").info(
        "access",
        direction=a["direction"],
        method=a["method"],
        path=a["path"],
        status=a["status"],
        duration_ms=0.413,
        bytes_received=a["bytes_received"],
        bytes_sent=a["bytes_sent"],
        peer_spiffe_id=a["peer_spiffe_id"],
        upstream=a["upstream"],
        error_code=None,
        request_id=a["request_id"],
        service=a["service"],
        attempts=None,
    )
    return out.getvalue().splitlines()[-1]


def _without_timestamp(line: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in line.items() if k != "timestamp"}


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_access_line_is_the_one_structlog_writes(reset: None, fmt: str) -> None:
    out = io.StringIO()
    configure_logging("info", fmt, stream=out)  # type: ignore[arg-type]
    access_log(**ACCESS)  # type: ignore[arg-type]
    ours = out.getvalue().splitlines()[-1]
    theirs = _structlogs_own_access_line(out)
    if fmt == "json":
        a, b = json.loads(ours), json.loads(theirs)
        assert list(a) == list(b)  # same fields in the same order
        assert _without_timestamp(a) == _without_timestamp(b)
        assert a["event"] == "access" and a["level"] == "info" and a["duration_ms"] == 0.413
    else:
        # Console lines start with the timestamp; everything after it is the same text.
        assert ours.split(" ", 1)[1] == theirs.split(" ", 1)[1]
        plain = re.sub(r"\x1b\[[0-9;]*m", "", ours)  # without the colours
        assert "access" in plain and "peer_spiffe_id=spiffe://example.org/ns/default/sa/web" in plain


def test_the_access_line_carries_the_current_span(reset: None) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    ctx = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=False)
    token = enter_span(ctx)
    try:
        access_log(**ACCESS)  # type: ignore[arg-type]
    finally:
        leave_span(token)
    line = json.loads(out.getvalue())
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and line["span_id"] == "b7ad6b7169203331"


def test_access_events_reach_capture_logs_and_honour_the_level(reset: None) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    with structlog.testing.capture_logs() as captured:
        access_log(**ACCESS)  # type: ignore[arg-type]
    assert [e["event"] for e in captured] == ["access"] and out.getvalue() == ""
    configure_logging("warning", "json", stream=out)
    access_log(**ACCESS)  # type: ignore[arg-type]
    assert out.getvalue() == ""
