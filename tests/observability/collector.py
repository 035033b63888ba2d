"""A real OTLP/HTTP collector for process tests: `POST /v1/traces`, protobuf decoded with
opentelemetry-proto (`trustmesh.tracing.otlp_receiver.decode_request`), spans kept in a `TraceStore`.

A stdlib threading server, because the sidecars under test are processes and the test itself is
synchronous; what it asserts is what went over the wire.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from trustmesh.tracing.otlp_receiver import StoredSpan, TraceStore, decode_request


class Collector:
    def __init__(self) -> None:
        self.store = TraceStore()
        self.requests = 0
        store = self.store
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    self.send_response(415)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                store.add(decode_request(body))
                collector.requests += 1
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp", daemon=True)
        self._thread.start()

    def wait_spans(self, trace_id: str, count: int, timeout: float = 30.0) -> list[StoredSpan]:
        """The spans of `trace_id` once `count` arrived (bounded wait: batches leave every second)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.store.spans(trace_id)
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
