"""Large streamed bodies with bounded memory, opaque TCP with half-close, and drain."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta

import trio

from tests.sidecar_proxy.harness import (
    API,
    HttpClient,
    StaticIdentity,
    client_context,
    endpoint,
    inbound_running,
    open_plain,
    open_tls,
    outbound_running,
    vm_rss_kib,
)
from trustmesh.sidecar.config import Limits

MIB = 1024 * 1024


async def test_200_mb_chunked_body_streams_with_bounded_rss(web: StaticIdentity, api: StaticIdentity) -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    total = 200 * MIB
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total // len(piece)):  # bounded: 3200 pieces
            digest.update(piece)
            yield piece

    async with (
        inbound_running(api) as inbound,
        outbound_running(web, [endpoint(inbound.port, API)]) as outbound,
    ):
        client = HttpClient(await open_plain(outbound.port))
        assert (await client.request("GET", "/warm-up")).status == 200
        before = vm_rss_kib()
        resp = await client.request("PUT", "/upload", body=body())
        grown_mib = (vm_rss_kib() - before) / 1024
        assert resp.status == 200
        seen = inbound.app.requests[-1]
        assert seen.body_len == total
        assert seen.body_sha256 == digest.hexdigest()
        # Client, both sidecars and the app share this process: 200 MB must not be held by any.
        assert grown_mib < 40, grown_mib
        await client.stream.aclose()


async def _half_close_backend(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Reads until EOF, then answers with the byte count and sha256, then closes."""

    async def handle(stream: trio.SocketStream) -> None:
        digest = hashlib.sha256()
        size = 0
        while data := await stream.receive_some(65536):
            digest.update(data)
            size += len(data)
        await stream.send_all(b"%d %s" % (size, digest.hexdigest().encode()))
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_tcp_mode_carries_half_close_both_ways(web: StaticIdentity, api: StaticIdentity) -> None:
    async with trio.open_nursery() as nursery:
        backend = await nursery.start(_half_close_backend)
        async with (
            inbound_running(api, protocol="tcp", app_port=backend) as inbound,
            outbound_running(web, [endpoint(inbound.port, API)], protocol="tcp") as outbound,
        ):
            stream = await open_plain(outbound.port)
            payload = b"0123456789" * 100_000
            await stream.send_all(payload)
            await stream.send_eof()  # half-close: the backend answers only after our EOF
            got = b""
            with trio.fail_after(10):
                while data := await stream.receive_some(65536):
                    got += data
            assert got == b"%d %s" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_drain_finishes_in_flight_request_and_stops_accepting(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    limits = Limits(drain_timeout=timedelta(seconds=5))
    async with inbound_running(api, limits=limits) as inbound:
        stream = await open_tls(inbound.port, client_context(web))
        idle = await open_tls(inbound.port, client_context(web))
        await stream.send_all(b"POST /slow HTTP/1.1\r\nhost: api\r\ncontent-length: 10\r\n\r\nhello")
        with trio.fail_after(10):
            while not inbound.counters.requests:  # bounded by fail_after
                await trio.sleep(0.01)
            inbound.drain.begin("test")
            await trio.sleep(0.1)
            await stream.send_all(b"world")  # the in-flight request completes after the drain began
            client = HttpClient(stream)
            resp = await client.read_response()
        assert resp.status == 200
        assert resp.header("connection") == "close"
        assert inbound.app.requests[-1].body_len == 10
        with trio.fail_after(10):
            await inbound.done.wait()  # the listener finished draining
            assert await idle.receive_some(10) == b""  # the idle keep-alive was closed
        await stream.aclose()
