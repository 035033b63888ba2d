"""The identity lifecycle against an in-process CA: join, persist, restart, renew, fail closed.

Time is trio's MockClock (jumping ahead whenever every task waits), seen by the lifecycle
and the CA through one `Clock`: a 100-second SVID lives its whole life in milliseconds.
"""

from __future__ import annotations

import ssl
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from trustmesh.ca import CertificateAuthority
from trustmesh.ca.join_token import JoinToken
from trustmesh.control.join_client import Svid
from trustmesh.identity.spiffe_id import SpiffeId
from trustmesh.sidecar import svid_files
from trustmesh.sidecar.bootstrap import ControlPlaneError, ControlPlaneRejected
from trustmesh.sidecar.identity_lifecycle import IdentityLifecycle, NoIdentity, backoff_delay, renewal_time

WEB = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")
TTL = timedelta(seconds=100)


class TrioTimeClock:
    """Wall-clock time that advances with trio's clock (a MockClock in these tests)."""

    def __init__(self) -> None:
        self._start = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._start + timedelta(seconds=trio.current_time())

    def monotonic(self) -> float:
        return trio.current_time()


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    # pytest-trio runs a test on the Clock among its arguments: every async test here takes it.
    # A threshold above zero: key generation runs in a worker thread, and time must not
    # jump while it does.
    return trio.testing.MockClock(autojump_threshold=0.02)


async def eventually(predicate: Callable[[], bool], within: float) -> None:
    """Wait (in mock time) until `predicate()` holds. Installing an SVID runs in a worker
    thread, which the mock clock does not wait for, so "after N seconds" checks poll."""
    with trio.fail_after(within):
        while not predicate():
            await trio.sleep(0.5)


class FakeControlPlane:
    """The identity API over an in-process CA; `down` makes every call fail like a dead network."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.down = False
        self.joins = 0
        self.renewals = 0
        self.used_tokens: set[str] = set()

    def _issue(self, key: ec.EllipticCurvePrivateKey) -> Svid:
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        issued = self.ca.sign_x509_svid(csr, WEB, ttl=TTL)
        return Svid(str(WEB), issued.chain_pem(), key, self.ca.bundle().to_pem(), issued.not_after)

    async def join(self, token: JoinToken, key: ec.EllipticCurvePrivateKey) -> Svid:
        await trio.lowlevel.checkpoint()
        if self.down:
            raise ControlPlaneError("connection refused")
        if token.token_id in self.used_tokens:
            raise ControlPlaneRejected("token already used", 403)
        self.used_tokens.add(token.token_id)
        self.joins += 1
        return self._issue(key)

    async def renew(self, current: Svid, key: ec.EllipticCurvePrivateKey) -> Svid:
        await trio.lowlevel.checkpoint()
        if self.down:
            raise ControlPlaneError("connection refused")
        self.renewals += 1
        return self._issue(key)

    async def fetch_bundle(self, current: Svid, trust_domain: str) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.down:
            raise ControlPlaneError("connection refused")
        return self.ca.bundle().to_pem()


@pytest.fixture
def clock() -> TrioTimeClock:
    return TrioTimeClock()


@pytest.fixture
async def cp(tmp_path: Path, clock: TrioTimeClock) -> FakeControlPlane:
    return FakeControlPlane(CertificateAuthority.init(tmp_path / "ca", "example.org", clock=clock))


def _token(cp: FakeControlPlane) -> JoinToken:
    return JoinToken.generate(cp.ca.fingerprint())


def _lifecycle(data_dir: Path, cp: FakeControlPlane, clock: TrioTimeClock) -> IdentityLifecycle:
    return IdentityLifecycle(data_dir, cp, clock=clock, bundle_refresh=timedelta(seconds=30))


async def test_join_persists_key_and_svid_privately(
    mock_clock: trio.testing.MockClock, tmp_path: Path, cp: FakeControlPlane, clock: TrioTimeClock
) -> None:
    data_dir = tmp_path / "data"
    life = _lifecycle(data_dir, cp, clock)
    await life.start(_token(cp))
    assert life.spiffe_id == WEB
    assert life.serving()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "svid.pem").stat().st_mode) == 0o600
    persisted = svid_files.load(data_dir)
    assert persisted is not None
    info = life.svid_info()
    assert info is not None and persisted.chain[0].serial_number == info.serial
    assert life.bundle().trust_domain == "example.org"
    assert isinstance(life.server_context(), ssl.SSLContext)


async def test_restart_uses_persisted_svid_without_a_token(
    mock_clock: trio.testing.MockClock, tmp_path: Path, cp: FakeControlPlane, clock: TrioTimeClock
) -> None:
    data_dir = tmp_path / "data"
    token = _token(cp)
    first = _lifecycle(data_dir, cp, clock)
    await first.start(token)
    first_serial = first.svid_info().serial  # type: ignore[union-attr]

    second = _lifecycle(data_dir, cp, clock)
    await second.start(None)
    assert second.spiffe_id == WEB
    assert cp.joins == 1
    # The same (used) token on an unchanged command line is not spent again either.
    third = _lifecycle(data_dir, cp, clock)
    await third.start(token)
    assert cp.joins == 1

    # A restart renews at once rather than waiting for half-life.
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert cp.renewals == 1
    assert second.svid_info().serial != first_serial  # type: ignore[union-attr]


async def test_without_token_or_svid_the_error_says_what_to_do(
    mock_clock: trio.testing.MockClock, tmp_path: Path, cp: FakeControlPlane, clock: TrioTimeClock
) -> None:
    with pytest.raises(NoIdentity, match=r"no SVID in .* and no --join-token"):
        await _lifecycle(tmp_path / "data", cp, clock).start(None)


async def test_expired_persisted_svid_needs_a_token(
    mock_clock: trio.testing.MockClock, tmp_path: Path, cp: FakeControlPlane, clock: TrioTimeClock
) -> None:
    data_dir = tmp_path / "data"
    await _lifecycle(data_dir, cp, clock).start(_token(cp))
    await trio.sleep(TTL.total_seconds() + 1)
    with pytest.raises(NoIdentity, match="expired at"):
        await _lifecycle(data_dir, cp, clock).start(None)
    # ...and a fresh token then works.
    life = _lifecycle(data_dir, cp, clock)
    await life.start(_token(cp))
    assert life.serving()


async def test_renews_at_about_half_life_and_swaps_contexts(
    mock_clock: trio.testing.MockClock, tmp_path: Path, cp: FakeControlPlane, clock: TrioTimeClock
) -> None:
    life = _lifecycle(tmp_path / "data", cp, clock)
    await life.start(_token(cp))
    info = life.svid_info()
    assert info is not None
    old_server, old_client = life.server_context(), life.client_context()
    async with trio.open_nursery() as nursery:
        await nursery.start(life.run)
        # Half of the time left on arrival (the CA's 30 s backdating does not count).
        lifetime = (info.not_after - clock.now()).total_seconds()
        until_early = lifetime * 0.44
        await trio.sleep(until_early)
        assert cp.renewals == 0
        await eventually(lambda: life.server_context() is not old_server, lifetime * 0.12)
        assert cp.renewals == 1
        assert life.client_context() is not old_client
        # Renewals keep coming while time passes: never expires with the control plane up.
        await trio.sleep(lifetime * 3)
        assert life.serving()
        assert cp.renewals >= 4
        nursery.cancel_scope.cancel()


async def test_control_plane_down_keeps_serving_then_fails_closed(
    mock_clock: trio.testing.MockClock, tmp_path: Path, cp: FakeControlPlane, clock: TrioTimeClock
) -> None:
    life = _lifecycle(tmp_path / "data", cp, clock)
    await life.start(_token(cp))
    info = life.svid_info()
    assert info is not None
    cp.down = True
    async with trio.open_nursery() as nursery:
        await nursery.start(life.run)
        await trio.sleep((info.not_after - clock.now()).total_seconds() - 1)
        assert life.serving()  # still valid: keep serving through the outage
        await trio.sleep(2)
        assert not life.serving()  # expired: fail closed
        cp.down = False  # (a real control plane would refuse the expired SVID; here it comes back)
        await eventually(life.serving, BACKOFF_CAP_SECONDS + 5)
        nursery.cancel_scope.cancel()


BACKOFF_CAP_SECONDS = 30


async def test_join_retries_while_control_plane_is_unreachable(
    mock_clock: trio.testing.MockClock, tmp_path: Path, cp: FakeControlPlane, clock: TrioTimeClock
) -> None:
    cp.down = True
    life = _lifecycle(tmp_path / "data", cp, clock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(life.start, _token(cp))
        await trio.sleep(20)
        assert life.svid_info() is None
        cp.down = False
        await eventually(life.serving, BACKOFF_CAP_SECONDS + 5)


async def test_refused_token_is_not_retried(
    mock_clock: trio.testing.MockClock, tmp_path: Path, cp: FakeControlPlane, clock: TrioTimeClock
) -> None:
    token = _token(cp)
    await _lifecycle(tmp_path / "a", cp, clock).start(token)
    with pytest.raises(ControlPlaneRejected, match="already used"):
        await _lifecycle(tmp_path / "b", cp, clock).start(token)


async def test_bundle_refresh_picks_up_a_new_root(
    mock_clock: trio.testing.MockClock, tmp_path: Path, cp: FakeControlPlane, clock: TrioTimeClock
) -> None:
    life = _lifecycle(tmp_path / "data", cp, clock)
    await life.start(_token(cp))
    roots_before = len(life.bundle().x509_authorities)
    cp.ca.rotate_root()
    assert len(cp.ca.bundle().x509_authorities) > roots_before
    async with trio.open_nursery() as nursery:
        await nursery.start(life.run)
        want = len(cp.ca.bundle().x509_authorities)
        await eventually(lambda: len(life.bundle().x509_authorities) == want, 35)
        nursery.cancel_scope.cancel()


def test_renewal_time_is_half_life_with_bounded_jitter() -> None:
    import random

    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(hours=1)
    for _ in range(200):
        at = renewal_time(start, end, rng)
        assert start + timedelta(minutes=27) <= at <= start + timedelta(minutes=33)
    # A 4 s SVID backdated 30 s by the CA is renewed about 2 s after arrival, not at once.
    at = renewal_time(start, start + timedelta(seconds=4), rng)
    assert start + timedelta(seconds=1.8) <= at <= start + timedelta(seconds=2.2)
    delays = [backoff_delay(n, rng) for n in range(40)]
    assert all(0 <= d <= 30 for d in delays)


async def test_persisted_svid_that_no_longer_validates_is_not_used(
    mock_clock: trio.testing.MockClock, tmp_path: Path, cp: FakeControlPlane, clock: TrioTimeClock
) -> None:
    data_dir = tmp_path / "data"
    await _lifecycle(data_dir, cp, clock).start(_token(cp))
    # A bundle from another CA (a restored backup from elsewhere, say): the chain no longer validates.
    other = CertificateAuthority.init(tmp_path / "other-ca", "example.org", clock=clock)
    svid_files.save_bundle(data_dir, other.bundle().to_pem())
    with pytest.raises(NoIdentity, match="unusable"):
        await _lifecycle(data_dir, cp, clock).start(None)
    life = _lifecycle(data_dir, cp, clock)
    await life.start(_token(cp))
    assert life.serving() and cp.joins == 2
