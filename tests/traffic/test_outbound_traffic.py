"""The outbound's traffic management end to end: real sidecars (in-process), real mTLS.

Several inbound sidecars with echo apps stand for a service's endpoints; one outbound
calls them. Assertions count requests at the apps, never time: speed is for benchmarks.
Ejection tests move a ManualClock injected into outlier detection and the retry budget.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace

import trio

from tests.sidecar_proxy.harness import (
    API,
    HttpClient,
    RunningInbound,
    StaticIdentity,
    endpoint,
    free_port,
    inbound_running,
    open_plain,
    outbound_running,
)
from trustmesh.clock import ManualClock
from trustmesh.policy.loader import load_revision
from trustmesh.policy.model import Revision
from trustmesh.sidecar.outbound.http_client import TrafficCounters
from trustmesh.sidecar.outbound.outlier import OutlierSettings
from trustmesh.sidecar.outbound.retry_budget import BudgetSettings
from trustmesh.sidecar.outbound.traffic_settings import (
    DEFAULT_SETTINGS,
    FixedTrafficSettings,
    TrafficSettingsStore,
)

ROUND_ROBIN = replace(DEFAULT_SETTINGS, load_balancer="ROUND_ROBIN")


@contextlib.asynccontextmanager
async def endpoints_of(api: StaticIdentity, n: int) -> AsyncIterator[list[RunningInbound]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(inbound_running(api)) for _ in range(n)]


def counts(inbounds: list[RunningInbound]) -> list[int]:
    return [len(i.app.requests) for i in inbounds]


async def get_many(port: int, n: int, *, clients: int = 1, method: str = "GET") -> list[int]:
    """`n` requests over `clients` concurrent keep-alive connections; the statuses."""
    statuses: list[int] = []

    async def one_client(share: int) -> None:
        client = HttpClient(await open_plain(port))
        for _ in range(share):
            statuses.append((await client.request(method, "/x")).status)
        await client.stream.aclose()

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(one_client, n // clients + (1 if i < n % clients else 0))
    return statuses


async def test_load_spreads_across_endpoints(web: StaticIdentity, api: StaticIdentity) -> None:
    async with endpoints_of(api, 3) as eps:
        targets = [endpoint(e.port, API) for e in eps]
        async with outbound_running(web, targets) as out:
            assert await get_many(out.port, 90, clients=6) == [200] * 90
        assert sum(counts(eps)) == 90
        assert min(counts(eps)) >= 9, counts(eps)  # P2C: every endpoint takes a real share


async def test_round_robin_is_even(web: StaticIdentity, api: StaticIdentity) -> None:
    async with endpoints_of(api, 3) as eps:
        targets = [endpoint(e.port, API) for e in eps]
        async with outbound_running(web, targets, settings=FixedTrafficSettings(ROUND_ROBIN)) as out:
            assert await get_many(out.port, 30) == [200] * 30
        assert counts(eps) == [10, 10, 10]


async def test_p2c_sends_clearly_less_to_a_slow_endpoint(web: StaticIdentity, api: StaticIdentity) -> None:
    async with endpoints_of(api, 2) as (fast, slow):
        slow.app.delay = 0.05
        targets = [endpoint(fast.port, API), endpoint(slow.port, API)]
        async with outbound_running(web, targets) as out:
            assert await get_many(out.port, 120, clients=4) == [200] * 120
        to_fast, to_slow = counts([fast, slow])
        assert to_fast + to_slow == 120
        assert to_slow * 3 < to_fast, (to_fast, to_slow)


async def test_killing_one_of_two_endpoints_under_steady_gets_is_invisible(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    kill = trio.Event()

    async def run_victim(task_status: trio.TaskStatus[RunningInbound] = trio.TASK_STATUS_IGNORED) -> None:
        async with inbound_running(api) as running:
            task_status.started(running)
            await kill.wait()  # leaving the block drains and stops the sidecar and its app

    async with inbound_running(api) as survivor, trio.open_nursery() as victims:
        victim: RunningInbound = await victims.start(run_victim)
        targets = [endpoint(survivor.port, API), endpoint(victim.port, API)]
        traffic = TrafficCounters()
        statuses: list[int] = []
        async with outbound_running(web, targets, traffic_counters=traffic) as out:

            async def steady(client_id: int) -> None:
                client = HttpClient(await open_plain(out.port))
                for _ in range(60):
                    statuses.append((await client.request("GET", f"/steady/{client_id}")).status)
                    await trio.sleep(0)

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(steady, i)
                while len(statuses) < 40:
                    await trio.sleep(0.005)
                assert len(victim.app.requests) > 0  # it did take traffic before dying
                kill.set()
        assert statuses == [200] * 180
        assert traffic.retries >= 1  # the failures were there, and retried
        # A GET the dying app had received but never answered is retried on the survivor (it is
        # idempotent), so the apps may see it twice: every request beyond 180 is one of the retries.
        seen = len(survivor.app.requests) + len(victim.app.requests)
        assert 180 <= seen <= 180 + traffic.retries, (seen, traffic.retries)


async def test_retries_stay_within_the_budget_when_every_endpoint_fails(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    settings = replace(
        DEFAULT_SETTINGS,
        budget=BudgetSettings(percent=20, min_per_second=0, window=10),
        outlier=OutlierSettings(consecutive_failures=1000),
    )
    traffic = TrafficCounters()
    async with endpoints_of(api, 2) as eps:
        for e in eps:
            e.app.status = 503
        targets = [endpoint(e.port, API) for e in eps]
        async with outbound_running(
            web,
            targets,
            settings=FixedTrafficSettings(settings),
            clock=ManualClock(),
            traffic_counters=traffic,
        ) as out:
            client = HttpClient(await open_plain(out.port))
            for _ in range(50):
                resp = await client.request("GET", "/down")
                assert resp.status == 503
                assert resp.header("x-trustmesh-error") is None  # the app's own 503, passed on
        attempts = sum(counts(eps))
        assert attempts == 50 + traffic.retries
        assert 0 < traffic.retries <= 10  # 20% of 50 requests
        assert traffic.budget_exhausted > 0


async def test_a_retry_goes_to_another_endpoint(web: StaticIdentity, api: StaticIdentity) -> None:
    async with endpoints_of(api, 2) as (bad, good):
        bad.app.status = 503
        targets = [endpoint(bad.port, API), endpoint(good.port, API)]
        async with outbound_running(web, targets, settings=FixedTrafficSettings(ROUND_ROBIN)) as out:
            assert await get_many(out.port, 10) == [200] * 10
        # Every request that met `bad` first was retried once, on `good`.
        assert counts([bad, good]) == [5, 10]


async def test_deadline_fires_on_a_hanging_app(web: StaticIdentity, api: StaticIdentity) -> None:
    settings = replace(DEFAULT_SETTINGS, request_timeout=0.3)
    traffic = TrafficCounters()
    async with endpoints_of(api, 1) as (hung,):
        hung.app.delay = 3600
        targets = [endpoint(hung.port, API)]
        async with outbound_running(
            web, targets, settings=FixedTrafficSettings(settings), traffic_counters=traffic
        ) as out:
            client = HttpClient(await open_plain(out.port))
            resp = await client.request("GET", "/hang")
        assert (resp.status, resp.header("x-trustmesh-error")) == (504, "deadline-exceeded")
        assert traffic.deadlines == 1 and len(hung.app.requests) == 1  # a deadline is not retried


async def test_an_endpoint_is_ejected_after_five_failures_and_readmitted(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    clock = ManualClock()
    async with endpoints_of(api, 2) as (good, bad):
        bad.app.status = 500  # a failure, but not one that is retried
        targets = [endpoint(good.port, API), endpoint(bad.port, API)]
        async with outbound_running(
            web, targets, settings=FixedTrafficSettings(ROUND_ROBIN), clock=clock
        ) as out:
            statuses = await get_many(out.port, 30)
            assert statuses.count(500) == 5 and len(bad.app.requests) == 5  # then ejected
            clock.advance(29)
            await get_many(out.port, 10)
            assert len(bad.app.requests) == 5  # still out
            bad.app.status = 200
            clock.advance(1)
            assert await get_many(out.port, 10) == [200] * 10
            assert len(bad.app.requests) == 10  # readmitted, back in the rotation


async def test_no_healthy_endpoints_fails_fast(web: StaticIdentity, api: StaticIdentity) -> None:
    settings = replace(ROUND_ROBIN, outlier=OutlierSettings(consecutive_failures=2, max_ejected_percent=100))
    async with endpoints_of(api, 1) as (only,):
        only.app.status = 500
        async with outbound_running(
            web, [endpoint(only.port, API)], settings=FixedTrafficSettings(settings), clock=ManualClock()
        ) as out:
            client = HttpClient(await open_plain(out.port))
            assert [(await client.request("GET", "/")).status for _ in range(2)] == [500, 500]
            resp = await client.request("GET", "/")
        assert (resp.status, resp.header("x-trustmesh-error")) == (503, "no-healthy-endpoints")
        assert len(only.app.requests) == 2


async def test_post_is_not_retried_unless_marked(web: StaticIdentity, api: StaticIdentity) -> None:
    async with endpoints_of(api, 2) as eps:
        for e in eps:
            e.app.status = 503
        targets = [endpoint(e.port, API) for e in eps]
        async with outbound_running(web, targets) as out:
            client = HttpClient(await open_plain(out.port))
            assert (await client.request("POST", "/orders", body=b"one order")).status == 503
            assert sum(counts(eps)) == 1
            marked = [("x-trustmesh-retryable", "true")]
            assert (await client.request("POST", "/orders", marked, body=b"safe")).status == 503
            assert sum(counts(eps)) == 1 + 3
            assert (await client.request("PUT", "/item", body=b"x" * 1000)).status == 503
            assert sum(counts(eps)) == 4 + 3
        bodies = {r.body_sha256 for e in eps for r in e.app.requests if r.method == "PUT"}
        assert bodies == {hashlib.sha256(b"x" * 1000).hexdigest()}  # each replay carried the body


async def test_a_large_streamed_body_is_not_retried(web: StaticIdentity, api: StaticIdentity) -> None:
    piece = b"y" * 16384

    async def body() -> AsyncIterator[bytes]:
        for _ in range(16):  # 256 KiB, past the 64 KiB replay buffer
            yield piece
            await trio.sleep(0)

    async with endpoints_of(api, 2) as eps:
        for e in eps:
            e.app.status = 503
        targets = [endpoint(e.port, API) for e in eps]
        async with outbound_running(web, targets) as out:
            client = HttpClient(await open_plain(out.port))
            assert (await client.request("PUT", "/blob", body=body())).status == 503
        (seen,) = [r for e in eps for r in e.app.requests]
        assert seen.body_len == 16 * 16384
        assert seen.body_sha256 == hashlib.sha256(piece * 16).hexdigest()


async def test_a_post_goes_elsewhere_when_the_connection_fails(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    """Nothing was sent to a dead endpoint, so even a POST may try another."""
    async with endpoints_of(api, 1) as (live,):
        targets = [endpoint(free_port(), API), endpoint(live.port, API)]
        async with outbound_running(web, targets, settings=FixedTrafficSettings(ROUND_ROBIN)) as out:
            client = HttpClient(await open_plain(out.port))
            for _ in range(4):
                assert (await client.request("POST", "/p", body=b"once")).status == 200
        assert len(live.app.requests) == 4


async def test_a_new_policy_revision_applies_without_restart(
    web: StaticIdentity, api: StaticIdentity
) -> None:
    store = TrafficSettingsStore()

    def revision(spec: str) -> Revision:
        text = (
            "apiVersion: trustmesh.dev/v1\nkind: TrafficPolicy\nmetadata: {name: api}\n"
            f"spec:\n  service: {API}\n  {spec}\n"
        )
        loaded = load_revision({"t.yaml": text.encode()}, revision_id=spec)
        assert isinstance(loaded, Revision), loaded
        return loaded

    async with endpoints_of(api, 1) as (only,):
        only.app.status = 503
        async with outbound_running(
            web, [endpoint(only.port, API)], settings=store, clock=ManualClock()
        ) as out:
            client = HttpClient(await open_plain(out.port))
            await client.request("GET", "/")
            assert len(only.app.requests) == 3  # defaults: 3 attempts
            store.update(revision("retries: {maxAttempts: 1}"))
            await client.request("GET", "/")
            assert len(only.app.requests) == 4
            store.update(revision("retries: {maxAttempts: 2}"))
            await client.request("GET", "/")
            assert len(only.app.requests) == 6
