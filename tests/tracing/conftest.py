"""Fixtures for trustmesh.tracing: a real OTLP/HTTP receiver on loopback, and captured logs."""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from trustmesh.tracing.logs import configure_logging
from trustmesh.tracing.otlp_receiver import TraceStore, otlp_app


@dataclass
class Receiver:
    endpoint: str  # base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT
    store: TraceStore


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> AsyncIterator[Receiver]:
    """The in-process collector, served by hypercorn on 127.0.0.1 (an ephemeral port)."""
    store = TraceStore()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    stop = trio.Event()
    binds = await nursery.start(
        lambda task_status: serve(
            otlp_app(store), config, shutdown_trigger=stop.wait, task_status=task_status
        )
    )
    yield Receiver(binds[0], store)
    stop.set()


@pytest.fixture
def dead_endpoint() -> str:
    """A loopback URL where nothing listens (the port was just bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """JSON log lines of the test, as the CLI would print them on stderr."""
    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    configure_logging("debug", "json", stream=out)
    yield out
    structlog.reset_defaults()
    root.setLevel(level)
    for handler in [h for h in root.handlers if h.get_name() == "trustmesh"]:
        root.removeHandler(handler)
