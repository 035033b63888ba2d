"""Edge cases of the hot path's shortcuts (docs/sidecar-design.md): each one must behave
exactly like the slow path it replaces.

- the idle timeout and the outbound request deadline are dict entries and one timer task
  (`ScopeDeadlines`; `IdleConnections` for the idle one), which must fire exactly when a
  trio deadline would have, and never after a disarm;
- the next request is probed with a non-blocking read, and the probe switches itself off
  and on again (every 8th request), so pipelined and back-to-back requests must all be
  answered, in order, whichever way they arrive;
- a closed `Conn` refuses reads and writes (its cached `_sslobj` methods would not).
"""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
import trio
import trio.testing

from tests.sidecar_proxy.harness import (
    HttpClient,
    StaticIdentity,
    client_context,
    inbound_running,
    open_tls,
)
from trustmesh.sidecar.config import Limits
from trustmesh.sidecar.conn import Conn, ConnectionClosed
from trustmesh.sidecar.drain import Drain
from trustmesh.sidecar.listener import IdleConnections
from trustmesh.sidecar.scope_deadlines import ScopeDeadlines


def test_expire_cancels_only_scopes_past_their_expiry() -> None:
    async def main() -> None:
        idle = IdleConnections(Drain())
        short, long_, left = trio.CancelScope(), trio.CancelScope(), trio.CancelScope()
        idle.enter(short, 1.0)
        idle.enter(long_, 5.0)
        idle.enter(left, 1.0)
        idle.leave(left)  # a request arrived: no longer idle
        now = trio.current_time()
        assert idle.expire(now + 0.5) == 0
        assert idle.expire(now + 1.0) == 1
        assert short.cancel_called and not long_.cancel_called and not left.cancel_called
        assert idle.expire(now + 1.0) == 0  # expired scopes are forgotten

    trio.run(main, clock=trio.testing.MockClock())


def test_sweeper_fires_within_an_eighth_of_the_timeout() -> None:
    async def main() -> None:
        idle = IdleConnections(Drain())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(idle.sweep)
            await trio.sleep(0.1)  # the sweeper sleeps its first (1 s) interval
            scope = trio.CancelScope()
            idle.enter(scope, 0.8)  # a shorter timeout re-arms it at once
            start = trio.current_time()
            with scope:
                await trio.sleep_forever()
            late = trio.current_time() - start - 0.8
            assert 0 <= late <= 0.8 / 8 + 1e-9
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_idle_scope_is_cancelled_at_once_during_a_drain() -> None:
    async def main() -> None:
        drain = Drain()
        idle = IdleConnections(drain)
        drain.begin("test")
        scope = trio.CancelScope()
        idle.enter(scope, 60.0)
        assert scope.cancel_called

    trio.run(main)


def test_request_deadline_fires_exactly_on_time_and_never_after_a_disarm() -> None:
    async def main() -> None:
        deadlines = ScopeDeadlines()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(deadlines.run)
            await trio.sleep(1.0)  # the timer sleeps with nothing armed
            # Requests come and go before theirs are due: none is cancelled late.
            for _ in range(5):
                done = trio.CancelScope()
                deadlines.arm(done, 0.5)
                await trio.sleep(0.2)
                deadlines.disarm(done)
                assert not done.cancel_called
            slow, slower, early = trio.CancelScope(), trio.CancelScope(), trio.CancelScope()
            start = trio.current_time()
            deadlines.arm(slow, 3.0)
            deadlines.arm(slower, 7.0)
            deadlines.arm(early, 0.25)  # earlier than the timer's target: it re-aims
            for scope, timeout in ((early, 0.25), (slow, 3.0), (slower, 7.0)):
                with scope:
                    await trio.sleep_forever()
                assert scope.cancelled_caught
                assert trio.current_time() - start == pytest.approx(timeout, abs=1e-9)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_request_deadline_expire_returns_the_next_one_due() -> None:
    async def main() -> None:
        deadlines = ScopeDeadlines()
        a, b = trio.CancelScope(), trio.CancelScope()
        now = trio.current_time()
        deadlines.arm(a, 1.0)
        deadlines.arm(b, 2.0)
        assert (deadlines.expire(now + 0.5), deadlines.next_due()) == (0, now + 1.0)
        assert (deadlines.expire(now + 1.0), deadlines.next_due()) == (1, now + 2.0)
        assert a.cancel_called and not b.cancel_called
        deadlines.disarm(b)
        assert (deadlines.expire(now + 5.0), deadlines.next_due()) == (0, float("inf"))
        assert not b.cancel_called

    trio.run(main, clock=trio.testing.MockClock())


async def test_closed_conn_refuses_reads_and_writes() -> None:
    a, b = socket.socketpair()
    conn = Conn(a)
    conn.close()
    with pytest.raises(ConnectionClosed):
        await conn.recv()
    with pytest.raises(ConnectionClosed):
        await conn.recv_wait_first()  # does not wait on a descriptor that is gone
    with pytest.raises(ConnectionClosed):
        await conn.send_all(b"x")
    with pytest.raises(ConnectionClosed):
        conn.recv_nowait()  # never reads whatever socket gets the fd number next
    b.close()


async def test_pipelined_requests_are_answered_in_order(web: StaticIdentity, api: StaticIdentity) -> None:
    async with inbound_running(api) as inbound:
        stream = await open_tls(inbound.port, client_context(web))
        await stream.send_all(b"".join(f"GET /p{i} HTTP/1.1\r\nhost: svc\r\n\r\n".encode() for i in range(5)))
        got = b""
        bodies: list[bytes] = []
        with trio.fail_after(10):
            while len(bodies) < 5:
                got += await stream.receive_some(65536)
                while (end := got.find(b"\r\n\r\n")) >= 0:
                    head = got[:end].lower()
                    assert head.startswith(b"http/1.1 200 ")
                    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(got) < end + 4 + length:
                        break
                    bodies.append(got[end + 4 : end + 4 + length])
                    got = got[end + 4 + length :]
        for i, body in enumerate(bodies):
            assert f'"/p{i}"'.encode() in body
        assert [r.target for r in inbound.app.requests] == [f"/p{i}" for i in range(5)]
        await stream.aclose()


async def test_back_to_back_and_paused_requests_on_one_connection(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    """Enough requests for the probe to switch off and on again, some after a pause (the
    idle wait), one whose head arrives in two pieces (the head deadline path)."""
    limits = Limits(idle_timeout=timedelta(seconds=5), drain_timeout=timedelta(seconds=1))
    async with inbound_running(api, limits=limits) as inbound:
        stream = await open_tls(inbound.port, client_context(web))
        client = HttpClient(stream)
        with trio.fail_after(20):
            for i in range(20):
                if i % 5 == 0:
                    await trio.sleep(0.05)
                assert (await client.request("GET", f"/r{i}")).status == 200
            await stream.send_all(b"GET /split HTTP/1.1\r\nho")
            await trio.sleep(0.05)
            await stream.send_all(b"st: svc\r\n\r\n")
            client.conn.start_next_cycle()
            assert (await client.read_response()).status == 200
        assert len(inbound.app.requests) == 21
        await stream.aclose()
