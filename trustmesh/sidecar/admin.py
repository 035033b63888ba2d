"""The sidecar's admin port: plain HTTP on loopback for probes, scripts and scrapers.

  GET  /live      200 while the process runs (the event loop answers)
  GET  /ready     200 once we hold a valid SVID and our config; 503 with the reason otherwise
                  (starting, SVID expired: failed closed, draining)
  GET  /svid      {"spiffe_id", "serial" (hex), "not_before", "not_after" (RFC 3339)}
  GET  /metrics   Prometheus text from the process's own registry
  GET  /config    the effective configuration, without secrets (never the join token)
  POST /shutdown  drain and exit, for jobs whose app has finished
  POST /renew     renew the SVID now (an operator rotating by hand, and rotation tests)

It is not the hot path, so it is a small h11 loop: one request per connection, a short
deadline and a head-size cap so a stuck or hostile client cannot hold it. No framework:
hypercorn and starlette would cost more resident memory than the rest of the sidecar.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import h11
import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from trustmesh.sidecar.config import HostPort
from trustmesh.sidecar.identity_lifecycle import SvidInfo

log = structlog.get_logger(__name__)

# A probe's request is a few hundred bytes; anything past this is not a probe.
MAX_REQUEST_HEAD = 16 * 1024
# A local probe answers in milliseconds; a connection idle for this long is dropped.
REQUEST_DEADLINE = 5.0


class AdminSource(Protocol):
    """What the admin server reads from the running sidecar."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason); the reason is one short phrase, shown with a 503."""
        ...

    def svid_info(self) -> SvidInfo | None: ...

    def effective_config(self) -> Mapping[str, Any]: ...

    def renew_soon(self) -> None:
        """Ask the identity lifecycle to renew now rather than at half-life."""
        ...


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


def _json(status: int, doc: Mapping[str, Any]) -> _Reply:
    return _Reply(status, json.dumps(doc, indent=2).encode() + b"\n")


def rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


class AdminServer:
    """Routes admin requests to the sidecar's state; `shutdown` is called for POST /shutdown."""

    def __init__(
        self,
        source: AdminSource,
        registry: CollectorRegistry,
        shutdown: Callable[[str], None],
    ) -> None:
        self._source = source
        self._registry = registry
        self._shutdown = shutdown

    async def serve(
        self, address: HostPort, *, task_status: trio.TaskStatus[HostPort] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on `address` until cancelled; `task_status.started` gets the bound address."""
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        sockname = listeners[0].socket.getsockname()
        bound = HostPort(address.host, int(sockname[1]))
        log.info("admin_listening", address=str(bound))
        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def route(self, method: str, path: str) -> _Reply:
        """The answer for one request (pure: tests call it without a socket)."""
        path = path.split("?", 1)[0]
        routes: dict[str, tuple[str, Callable[[], _Reply]]] = {
            "/live": ("GET", lambda: _Reply(200, b"live\n", "text/plain")),
            "/ready": ("GET", self._ready),
            "/svid": ("GET", self._svid),
            "/metrics": ("GET", self._metrics),
            "/config": ("GET", lambda: _json(200, self._source.effective_config())),
            "/shutdown": ("POST", self._do_shutdown),
            "/renew": ("POST", self._do_renew),
        }
        if path not in routes:
            return _json(404, {"error": "not_found", "detail": f"no admin endpoint {path}"})
        allowed, handler = routes[path]
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            return _json(405, {"error": "method_not_allowed", "detail": f"{path} takes {allowed}"})
        return handler()

    def _ready(self) -> _Reply:
        ready, reason = self._source.readiness()
        if ready:
            return _Reply(200, b"ready\n", "text/plain")
        return _Reply(503, f"not ready: {reason}\n".encode(), "text/plain")

    def _svid(self) -> _Reply:
        info = self._source.svid_info()
        if info is None:
            return _json(503, {"error": "no_svid", "detail": "no SVID yet"})
        return _json(
            200,
            {
                "spiffe_id": str(info.spiffe_id),
                "serial": format(info.serial, "x"),
                "not_before": rfc3339(info.not_before),
                "not_after": rfc3339(info.not_after),
            },
        )

    def _metrics(self) -> _Reply:
        return _Reply(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)

    def _do_shutdown(self) -> _Reply:
        self._shutdown("admin /shutdown")
        return _json(202, {"status": "draining"})

    def _do_renew(self) -> _Reply:
        if self._source.svid_info() is None:
            return _json(503, {"error": "no_svid", "detail": "no SVID yet"})
        self._source.renew_soon()
        return _json(202, {"status": "renewing"})

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        async with stream:
            with trio.move_on_after(REQUEST_DEADLINE):
                try:
                    request = await _read_request(conn, stream)
                except h11.RemoteProtocolError as err:
                    reply = _json(err.error_status_hint, {"error": "bad_request", "detail": str(err)})
                    try:
                        await _send(conn, stream, reply, head_only=False)
                        await _lingering_close(stream)
                    except (trio.BrokenResourceError, h11.LocalProtocolError):
                        pass  # the client is gone, or h11 cannot frame an answer: just close
                    return
                except trio.BrokenResourceError:
                    return
                if request is None:
                    return
                method = request.method.decode("ascii", "replace")
                target = request.target.decode("ascii", "replace")
                reply = self.route(method, target)
                log.debug("admin_request", method=method, path=target, status=reply.status)
                try:
                    await _send(conn, stream, reply, head_only=method == "HEAD")
                except trio.BrokenResourceError:
                    return


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    """The request head; its body (if any) is read and discarded. None if the peer went away."""
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(MAX_REQUEST_HEAD)))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _send(conn: h11.Connection, stream: trio.SocketStream, reply: _Reply, *, head_only: bool) -> None:
    headers = [
        ("content-type", reply.content_type),
        ("content-length", str(len(reply.body))),
        ("connection", "close"),
        ("cache-control", "no-store"),
    ]
    out = conn.send(h11.Response(status_code=reply.status, headers=headers))
    if not head_only:
        out += conn.send(h11.Data(data=reply.body))
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)


async def _lingering_close(stream: trio.SocketStream) -> None:
    """Half-close, then discard what the client is still sending, for a moment.

    Closing with unread bytes in the receive buffer makes the kernel send a reset, which
    can destroy the error response before the client has read it (RFC 9112, 9.6).
    """
    await stream.send_eof()
    discarded = 0
    with trio.move_on_after(1.0):
        while discarded < 1024 * 1024:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            discarded += len(chunk)
