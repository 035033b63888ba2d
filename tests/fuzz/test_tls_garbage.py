"""Garbage and truncated TLS against the inbound listener and the control plane's listener.

Random bytes, a real ClientHello cut at a random point, a handshake that stops after the
ClientHello, and TLS records with impossible lengths: the server closes the connection
within its handshake timeout, keeps serving (a good client succeeds after every case),
and nothing reaches the app.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trustmesh.control.server as control_server
from tests.fuzz.budget import TRIED, fuzz_settings, on_loop, report, run_examples, seeded
from tests.sidecar_proxy.harness import HttpClient, StaticIdentity, client_context, inbound_running, open_tls
from trustmesh.ca import CertificateAuthority
from trustmesh.clock import ManualClock
from trustmesh.control.testing import start_control_plane
from trustmesh.sidecar.config import Limits

HANDSHAKE_TIMEOUT_S = 0.3
# The server must have closed by then: its timeout plus generous room for a loaded machine.
CLOSED_WITHIN_S = HANDSHAKE_TIMEOUT_S + 10


def client_hello(context: ssl.SSLContext) -> bytes:
    """The first flight of a real TLS 1.3 client using `context` (fresh randoms each time)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="sidecar")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def record(content_type: int, length: int, payload: bytes) -> bytes:
    return struct.pack("!BHH", content_type, 0x0303, length) + payload


@st.composite
def garbage(draw: st.DrawFn, hello: bytes) -> bytes:
    kind = draw(
        st.sampled_from(["random", "truncated-hello", "whole-hello", "bad-length", "hello-then-noise"])
    )
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=2048))
    if kind == "truncated-hello":
        return hello[: draw(st.integers(1, len(hello) - 1))]
    if kind == "whole-hello":
        return hello  # and then silence: the handshake stops mid-way
    if kind == "bad-length":
        ctype = draw(st.sampled_from([0x14, 0x15, 0x16, 0x17, 0x18, 0x00, 0xFF]))
        length = draw(st.sampled_from([0, 1, 5, 2**14, 2**14 + 256, 2**14 + 2049, 0xFFFF]))
        payload = draw(st.binary(max_size=min(length, 4096)))
        return record(ctype, length, payload)
    cut = draw(st.integers(5, len(hello)))
    return hello[:cut] + draw(st.binary(min_size=1, max_size=512))


async def closed_by_server(port: int, data: bytes) -> None:
    """Send `data` on a raw TCP connection and wait (bounded) for the server to close it."""
    with trio.fail_after(CLOSED_WITHIN_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            try:
                await stream.send_all(data)
                while await stream.receive_some(65536):
                    pass  # an alert, perhaps; then EOF
            except trio.BrokenResourceError:
                pass  # reset: closed too
        finally:
            await stream.aclose()


async def test_inbound_closes_garbage_tls_and_keeps_serving(web: StaticIdentity, api: StaticIdentity) -> None:
    limits = Limits(head_timeout=timedelta(seconds=HANDSHAKE_TIMEOUT_S), drain_timeout=timedelta(seconds=1))
    name = "tls garbage, inbound"
    async with inbound_running(api, limits=limits) as inbound:
        good = 0

        async def one(data: bytes) -> None:
            nonlocal good
            await closed_by_server(inbound.port, data)
            assert len(inbound.app.requests) == good  # nothing of the garbage reached the app
            with trio.fail_after(20):
                stream = await open_tls(inbound.port, client_context(web))
                assert (await HttpClient(stream).request("GET", "/after")).status == 200
                await stream.aclose()
            good += 1

        @seeded
        @fuzz_settings(60)
        @given(garbage(client_hello(client_context(web))))
        def examples(data: bytes) -> None:
            TRIED[name] += 1
            on_loop(one, data)

        await run_examples(examples)
        assert [r.target for r in inbound.app.requests] == ["/after"] * good
        report(name)


async def test_control_plane_closes_garbage_tls_and_keeps_serving(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control_server, "HANDSHAKE_TIMEOUT_S", HANDSHAKE_TIMEOUT_S)
    clock = ManualClock(current=datetime.now(UTC).replace(microsecond=0))
    CertificateAuthority.init(tmp_path / "state", "example.org", clock=clock)
    harness = await start_control_plane(nursery, tmp_path / "state", clock)
    port = int(harness.address.rsplit(":", 1)[1])
    name = "tls garbage, control plane"
    before = await harness.snapshot()
    try:
        async with harness.client() as client:

            async def one(data: bytes) -> None:
                await closed_by_server(port, data)
                with trio.fail_after(20):
                    assert (await client.get("/healthz")).status_code == 200

            @seeded
            @fuzz_settings(40)
            @given(garbage(client_hello(harness.verified_context())))
            def examples(data: bytes) -> None:
                TRIED[name] += 1
                on_loop(one, data)

            await run_examples(examples)
        assert await harness.snapshot() == before
        report(name)
    finally:
        harness.cp.stop()
