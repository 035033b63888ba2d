"""Log configuration: one JSON object per line, stdlib records included, levels honoured."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from trustmesh.tracing.logs import configure_logging


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
