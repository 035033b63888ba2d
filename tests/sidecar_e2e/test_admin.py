"""The admin port: routing as pure calls, and the h11 loop over a real loopback socket."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Gauge

from trustmesh.identity.spiffe_id import SpiffeId
from trustmesh.sidecar.admin import AdminServer
from trustmesh.sidecar.config import HostPort
from trustmesh.sidecar.identity_lifecycle import SvidInfo


class FakeSource:
    def __init__(self) -> None:
        self.ready = (False, "starting: no SVID yet")
        self.info: SvidInfo | None = None
        self.renewals = 0

    def readiness(self) -> tuple[bool, str]:
        return self.ready

    def svid_info(self) -> SvidInfo | None:
        return self.info

    def effective_config(self) -> Mapping[str, Any]:
        return {"admin": "127.0.0.1:0"}

    def renew_soon(self) -> None:
        self.renewals += 1


def _server() -> tuple[AdminServer, FakeSource, list[str]]:
    registry = CollectorRegistry()
    Gauge("trustmesh_test_gauge", "a gauge", registry=registry).set(3)
    source = FakeSource()
    shutdowns: list[str] = []
    return AdminServer(source, registry, shutdowns.append), source, shutdowns


def test_routes() -> None:
    admin, source, shutdowns = _server()
    assert admin.route("GET", "/live").status == 200
    reply = admin.route("GET", "/ready")
    assert reply.status == 503 and b"no SVID yet" in reply.body
    assert admin.route("GET", "/svid").status == 503
    assert admin.route("POST", "/renew").status == 503
    source.ready = (True, "ready")
    source.info = SvidInfo(
        SpiffeId.parse("spiffe://example.org/web"),
        0xABC,
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 1, tzinfo=UTC),
    )
    assert admin.route("GET", "/ready?verbose=1").status == 200
    svid = json.loads(admin.route("GET", "/svid").body)
    assert svid == {
        "spiffe_id": "spiffe://example.org/web",
        "serial": "abc",
        "not_before": "2026-01-01T00:00:00Z",
        "not_after": "2026-01-01T01:00:00Z",
    }
    assert b"trustmesh_test_gauge 3.0" in admin.route("GET", "/metrics").body
    assert json.loads(admin.route("GET", "/config").body) == {"admin": "127.0.0.1:0"}
    assert admin.route("GET", "/shutdown").status == 405
    assert admin.route("POST", "/shutdown").status == 202 and shutdowns == ["admin /shutdown"]
    assert admin.route("POST", "/renew").status == 202 and source.renewals == 1
    assert admin.route("GET", "/nope").status == 404
    assert admin.route("HEAD", "/live").status == 200


async def _exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        chunks = []
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    return b"".join(chunks)


async def test_served_over_a_socket_with_clear_answers_to_garbage() -> None:
    admin, _, _ = _server()
    async with trio.open_nursery() as nursery:
        bound: HostPort = await nursery.start(admin.serve, HostPort("127.0.0.1", 0))
        reply = await _exchange(bound.port, b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 503 ") and reply.endswith(b"not ready: starting: no SVID yet\n")
        assert (await _exchange(bound.port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        huge = b"GET /live HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 40_000 + b"\r\n\r\n"
        assert (await _exchange(bound.port, huge)).startswith(b"HTTP/1.1 431 ")
        nursery.cancel_scope.cancel()
