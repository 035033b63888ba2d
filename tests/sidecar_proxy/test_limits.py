"""Abuse limits: 431, 408 (slow head, stalled body), max connections, smuggling, idle keep-alive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
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
    raw_exchange,
)
from trustmesh.sidecar.config import Limits


async def test_head_over_64_kib_is_431_and_never_forwarded(web: StaticIdentity, api: StaticIdentity) -> None:
    async with inbound_running(api) as inbound:
        request = b"GET / HTTP/1.1\r\nhost: api\r\nx-big: " + b"a" * (65 * 1024) + b"\r\n\r\n"
        got = await raw_exchange(inbound.port, request, client_context(web))
        assert got.startswith(b"HTTP/1.1 431 ")
        assert b"x-trustmesh-error: head-too-large" in got
        assert inbound.app.requests == []


async def test_endless_header_line_is_431_without_buffering_it(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    async with inbound_running(api) as inbound:
        stream = await open_tls(inbound.port, client_context(web))
        await stream.send_all(b"GET / HTTP/1.1\r\nx-endless: ")
        got = b""
        with trio.fail_after(10):
            for _ in range(13):  # 208 KiB: past the limit, within the lingering close budget
                try:
                    await stream.send_all(b"a" * 16384)
                except trio.BrokenResourceError:
                    break
            while piece := await _receive(stream):
                got += piece
        assert got.startswith(b"HTTP/1.1 431 ")
        assert inbound.app.requests == []


async def _receive(stream: trio.SSLStream[trio.SocketStream]) -> bytes:
    try:
        return await stream.receive_some(65536)
    except trio.BrokenResourceError:
        return b""


async def test_slow_head_is_408_and_closed(web: StaticIdentity, api: StaticIdentity) -> None:
    limits = Limits(head_timeout=timedelta(seconds=0.3), drain_timeout=timedelta(seconds=1))
    async with inbound_running(api, limits=limits) as inbound:
        stream = await open_tls(inbound.port, client_context(web))
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: api\r\n")  # never finished
        got = b""
        with trio.fail_after(10):
            while piece := await _receive(stream):
                got += piece
        assert got.startswith(b"HTTP/1.1 408 ")
        assert b"x-trustmesh-error: head-timeout" in got
        assert inbound.app.requests == []


async def test_idle_keep_alive_connection_is_closed(web: StaticIdentity, api: StaticIdentity) -> None:
    limits = Limits(idle_timeout=timedelta(seconds=0.3), drain_timeout=timedelta(seconds=1))
    async with inbound_running(api, limits=limits) as inbound:
        stream = await open_tls(inbound.port, client_context(web))
        client = HttpClient(stream)
        assert (await client.request("GET", "/")).status == 200
        with trio.fail_after(10):
            assert await _receive(stream) == b""  # closed by the sidecar, without a response


async def test_connections_over_the_limit_are_refused(web: StaticIdentity, api: StaticIdentity) -> None:
    limits = Limits(max_connections=2, drain_timeout=timedelta(seconds=1))
    async with inbound_running(api, limits=limits) as inbound:
        held = [await open_tls(inbound.port, client_context(web)) for _ in range(2)]
        with pytest.raises(trio.BrokenResourceError):
            extra = await open_tls(inbound.port, client_context(web))
            await extra.send_all(b"GET / HTTP/1.1\r\nhost: api\r\n\r\n")
            assert await extra.receive_some(100) == b""
            raise trio.BrokenResourceError("closed, as it should be")
        assert inbound.counters.connections_refused_limit == 1
        # the held connections still work
        assert (await HttpClient(held[0]).request("GET", "/")).status == 200
        for stream in held:
            await stream.aclose()


SMUGGLING = {
    "cl_and_te": (
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "te_and_cl": (
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n"
    ),
    "two_content_lengths": (
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde"
    ),
    "bad_chunk_size": (
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n4x\r\nabcd\r\n0\r\n\r\n"
    ),
    "chunk_without_crlf": (
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcGET /x HTTP/1.1\r\n\r\n"
    ),
    "te_not_chunked": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\nabc",
    "obs_fold": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "space_before_colon": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
async def test_smuggling_attempts_are_400_and_never_forwarded(
    web: StaticIdentity, api: StaticIdentity, case: str
) -> None:
    async with inbound_running(api) as inbound:
        got = await raw_exchange(inbound.port, SMUGGLING[case], client_context(web))
        assert got.startswith(b"HTTP/1.1 400 ")
        assert b"connection: close" in got
        assert inbound.app.requests == []
        assert inbound.app.raw_bytes == 0


async def _read_to_close(stream: trio.abc.ReceiveStream) -> bytes:
    got = b""
    with trio.fail_after(10):
        while True:
            try:
                piece = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not piece:
                break
            got += piece
    return got


async def test_stalled_request_body_is_408_and_never_completes_at_the_app(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    limits = Limits(body_timeout=timedelta(seconds=0.4), drain_timeout=timedelta(seconds=1))
    async with inbound_running(api, limits=limits) as inbound:
        stream = await open_tls(inbound.port, client_context(web))
        # 10 of 1000 promised bytes, then nothing: a trickled body holding the app's worker.
        await stream.send_all(
            b"POST /upload HTTP/1.1\r\nhost: api\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10
        )
        got = await _read_to_close(stream)
        assert got.startswith(b"HTTP/1.1 408 ")
        assert b"x-trustmesh-error: body-timeout" in got
        assert inbound.app.requests == []  # the app never saw the request end


async def test_slow_but_steady_body_is_not_timed_out(web: StaticIdentity, api: StaticIdentity) -> None:
    limits = Limits(body_timeout=timedelta(seconds=0.5), drain_timeout=timedelta(seconds=1))

    async def steady() -> AsyncIterator[bytes]:
        for _ in range(8):  # 1.2 s in all, well past the timeout; never 0.5 s without a byte
            yield b"y" * 10
            await trio.sleep(0.15)

    async with inbound_running(api, limits=limits) as inbound:
        client = HttpClient(await open_tls(inbound.port, client_context(web)))
        with trio.fail_after(10):
            response = await client.request("POST", "/upload", body=steady())
        assert response.status == 200
        assert response.json()["body_len"] == 80


async def test_outbound_stalled_body_from_the_app_is_408(web: StaticIdentity, api: StaticIdentity) -> None:
    limits = Limits(body_timeout=timedelta(seconds=0.4), drain_timeout=timedelta(seconds=1))
    async with (
        inbound_running(api) as inbound,
        outbound_running(web, [endpoint(inbound.port, API)], limits=limits) as outbound,
    ):
        stream = await open_plain(outbound.port)
        # POST is never replayed, so its body is streamed upstream as it comes.
        await stream.send_all(
            b"POST /upload HTTP/1.1\r\nhost: api\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10
        )
        got = await _read_to_close(stream)
        assert got.startswith(b"HTTP/1.1 408 ")
        assert b"x-trustmesh-error: body-timeout" in got
        assert b"x-request-id: " in got
        assert inbound.app.requests == []
