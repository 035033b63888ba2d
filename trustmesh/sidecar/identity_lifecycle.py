"""The sidecar's identity over its whole life: join once, persist, renew, and fail closed.

`IdentityLifecycle` is the one implementation of `IdentityView`: the proxies ask it for
the TLS contexts of their *next* handshake and never see a key or the control plane.

- Start: a valid SVID persisted in `--data-dir` wins (a restart needs no token, and the
  token on an unchanged command line is single-use anyway); otherwise the join token is
  exchanged for a first SVID; with neither, `NoIdentity` says what to do.
- Renew: at about half the lifetime (±5% jitter, so a fleet started together does not
  renew together), with a fresh key, over mutual TLS with the current SVID. Each SVID or
  bundle change builds new contexts and swaps them in one assignment: new handshakes use
  them at once, established connections keep the context they were made with.
- Control plane down: retry with capped exponential backoff and full jitter, keep serving
  while the SVID is valid. Once it has expired `serving()` is False: the proxies refuse
  new connections and `/ready` answers 503 (fail closed). Renewal keeps being tried with
  the expired SVID: a control plane back within its `--expired-renew-grace` renews it
  (the handshake proves we hold the key), and the sidecar serves again on its own. Past
  the grace the control plane answers `join_token_needed`; we log it, say it on /ready,
  and keep trying at the backoff cap (an operator may raise the grace and restart it).
- Bundle: renew responses carry the roots; between renewals the roots are refreshed
  every `bundle_refresh` so a root rotation reaches new handshakes without a restart.

Every wait is computed from the injected clock, so tests drive rotation and expiry
with a fake clock instead of sleeping.
"""

from __future__ import annotations

import dataclasses
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import structlog
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry, Counter, Gauge

from trustmesh.ca.join_token import JoinToken
from trustmesh.clock import Clock, SystemClock
from trustmesh.control.join_client import Svid
from trustmesh.identity.bundle import TrustBundle
from trustmesh.identity.errors import SvidError
from trustmesh.identity.spiffe_id import SpiffeId
from trustmesh.identity.x509_svid import validate_x509_svid
from trustmesh.sidecar import svid_files, tls
from trustmesh.sidecar.bootstrap import ControlPlaneError, ControlPlaneRejected

log = structlog.get_logger(__name__)

# Renew at half the remaining lifetime, give or take 5%: half leaves as much time again to ride out
# a control-plane outage, and the jitter spreads a fleet that joined at the same moment.
RENEW_FRACTION = 0.5
RENEW_JITTER = 0.05
# Backoff after a failed renewal or join: 1 s doubling to 30 s, full jitter (AWS builders'
# library): a control plane coming back is not hit by every sidecar in the same second.
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
# The control plane's error code for an expired SVID it will no longer renew (issuer.py).
JOIN_TOKEN_NEEDED = "join_token_needed"
# What /ready says when failed closed, and when failed closed for good.
FAILED_CLOSED_REASON = "SVID expired: failed closed"
NEEDS_TOKEN_REASON = "SVID expired beyond the recovery grace: needs a new join token"
# How often the roots are refreshed between renewals; the bundle's own refresh hint
# (B-06, five minutes by default) says the same.
DEFAULT_BUNDLE_REFRESH = timedelta(minutes=5)
# Waits are cut into slices of at most this, so a wall-clock jump (suspend, NTP step)
# is noticed within seconds instead of after a long monotonic sleep.
MAX_SLEEP_SLICE = 5.0


class ControlPlaneApi(Protocol):
    """The identity API as the lifecycle uses it (`bootstrap.ControlPlaneClient`; a fake in tests)."""

    async def join(self, token: JoinToken, key: ec.EllipticCurvePrivateKey) -> Svid: ...

    async def renew(self, current: Svid, key: ec.EllipticCurvePrivateKey) -> Svid: ...

    async def fetch_bundle(self, current: Svid, trust_domain: str) -> bytes: ...


class NoIdentity(Exception):
    """The sidecar cannot obtain an identity without operator action (message says which)."""


def renewal_time(received: datetime, not_after: datetime, rng: random.Random) -> datetime:
    """When to renew an SVID received at `received` and valid until `not_after` (pure, for tests).

    Half of the time *left* when it arrived, not of notBefore..notAfter: the CA backdates
    notBefore for clock skew (30 s), and with a short TTL half of that window can already
    be over on arrival, which would renew in a tight loop.
    """
    fraction = RENEW_FRACTION + rng.uniform(-RENEW_JITTER, RENEW_JITTER)
    return received + max(not_after - received, timedelta(0)) * fraction


def backoff_delay(attempt: int, rng: random.Random, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before retry number `attempt` (0-based): full jitter, capped."""
    return rng.uniform(0.0, min(cap, BACKOFF_BASE * 2.0 ** min(attempt, 16)))


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key for each SVID: a renewal never re-certifies a key that has been in use."""
    return ec.generate_private_key(ec.SECP256R1())


def leaf_spiffe_id(leaf: x509.Certificate) -> SpiffeId:
    """The single URI SAN of an SVID leaf (validated fully elsewhere; this only reads it)."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as err:
        raise ValueError("SVID leaf has no subjectAltName") from err
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise ValueError(f"SVID leaf has {len(uris)} URI SANs, expected exactly one")
    return SpiffeId.parse(uris[0])


@dataclass(frozen=True)
class SvidInfo:
    """The public facts about the current SVID (what `/svid` shows)."""

    spiffe_id: SpiffeId
    serial: int
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class _Contexts:
    server: ssl.SSLContext
    client: ssl.SSLContext


class LifecycleMetrics:
    """The lifecycle's Prometheus series, registered in the process's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Named and labelled as docs/observability.md lists it (shared with the control plane).
        self.cert_expiry = Gauge(
            "trustmesh_cert_expiry_timestamp_seconds",
            "Unix time at which a certificate in use expires (our SVID, each trust anchor).",
            ["kind", "trust_domain", "spiffe_id", "serial"],
            registry=registry,
        )
        self.renewals = Counter(
            "trustmesh_svid_renewals",
            "SVID renewal attempts by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.serving = Gauge(
            "trustmesh_sidecar_serving",
            "1 while the sidecar holds a valid SVID and accepts connections, 0 when failed closed.",
            registry=registry,
        )


def _show_certificates(metrics: LifecycleMetrics, info: SvidInfo, bundle: TrustBundle) -> None:
    """Replace the expiry series: the old SVID's serial must not linger after a rotation."""
    td = info.spiffe_id.trust_domain
    metrics.cert_expiry.clear()
    metrics.cert_expiry.labels("svid", td, str(info.spiffe_id), format(info.serial, "x")).set(
        info.not_after.timestamp()
    )
    for root in bundle.x509_authorities:
        metrics.cert_expiry.labels("trust_anchor", td, "", format(root.serial_number, "x")).set(
            root.not_valid_after_utc.timestamp()
        )


def build_contexts(
    chain_pem: bytes, key_pem: bytes, roots_pem: bytes
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client mTLS contexts for one SVID and bundle (trustmesh/sidecar/tls.py decides how)."""
    return tls.server_context(chain_pem, key_pem, roots_pem), tls.client_context(
        chain_pem, key_pem, roots_pem
    )


class IdentityLifecycle:
    """Holds the sidecar's SVID and trust bundle; implements `IdentityView` for the proxies."""

    def __init__(
        self,
        data_dir: Path,
        client: ControlPlaneApi,
        *,
        clock: Clock,
        metrics: LifecycleMetrics | None = None,
        rng: random.Random | None = None,
        bundle_refresh: timedelta = DEFAULT_BUNDLE_REFRESH,
        backoff_cap: float = BACKOFF_CAP,
        context_builder: Callable[
            [bytes, bytes, bytes], tuple[ssl.SSLContext, ssl.SSLContext]
        ] = build_contexts,
    ) -> None:
        self._data_dir = data_dir
        self._client = client
        self._clock = clock
        self._metrics = metrics
        self._rng = rng or random.SystemRandom()
        self._bundle_refresh = bundle_refresh
        # The longest wait between retries while the control plane is unreachable or refuses.
        self._backoff_cap = backoff_cap
        self._build_contexts = context_builder
        self._info: SvidInfo | None = None
        # `_info`'s validity window as POSIX seconds, for `serving()` on every request: with the
        # system clock that is a float comparison against time.time() instead of building an
        # aware datetime (2% of the inbound sidecar's CPU in py-spy). Injected clocks keep now().
        self._window: tuple[float, float] = (0.0, 0.0)
        self._system_clock = type(clock) is SystemClock
        self._svid: Svid | None = None  # key, chain and bundle, as join_client presents them
        self._bundle: TrustBundle | None = None
        self._bundle_pem = b""
        self._contexts: _Contexts | None = None
        self._renew_at: datetime | None = None
        self._renew_now = trio.Event()
        # Set when the control plane refused to renew our expired SVID for good (past the
        # recovery grace); cleared by any SVID installed later.
        self._needs_join_token = False
        # Renewal and bundle refresh both rebuild the contexts; one at a time, so the last
        # swap always pairs the newest SVID with the newest bundle.
        self._install_lock = trio.Lock()

    # ----- IdentityView -----

    @property
    def spiffe_id(self) -> SpiffeId:
        return self._require_info().spiffe_id

    def server_context(self) -> ssl.SSLContext:
        return self._require_contexts().server

    def client_context(self) -> ssl.SSLContext:
        return self._require_contexts().client

    def bundle(self) -> TrustBundle:
        if self._bundle is None:
            raise RuntimeError("no trust bundle yet: start() has not completed")
        return self._bundle

    def now(self) -> datetime:
        return self._clock.now()

    def serving(self) -> bool:
        """True while we hold an SVID inside its validity window: the fail-closed switch."""
        if self._info is None:
            return False
        start, end = self._window
        now = time.time() if self._system_clock else self._clock.now().timestamp()
        return start <= now < end

    def not_serving_reason(self) -> str:
        """Why `serving()` is False, as `/ready` shows it (one short phrase)."""
        if self._info is None:
            return "starting: no SVID yet"
        return NEEDS_TOKEN_REASON if self._needs_join_token else FAILED_CLOSED_REASON

    # ----- for the admin server -----

    def svid_info(self) -> SvidInfo | None:
        return self._info

    def current_svid(self) -> Svid:
        """Key, chain and bundle as `join_client` presents them (other mTLS calls to the control plane)."""
        return self._require_svid()

    # ----- lifecycle -----

    async def start(self, join_token: JoinToken | None) -> None:
        """Obtain a usable SVID: the persisted one if valid, else join with the token.

        Raises `NoIdentity` when neither is possible, and `ControlPlaneRejected` when the
        control plane refuses the token. An unreachable control plane is retried (the
        sidecar may well start before it) until the caller cancels.
        """
        await trio.to_thread.run_sync(svid_files.prepare_data_dir, self._data_dir)
        now = self._clock.now()
        try:
            persisted = await trio.to_thread.run_sync(svid_files.load, self._data_dir)
            if persisted is not None and now < persisted.chain[0].not_valid_after_utc:
                _check_persisted(persisted, now)
        except (svid_files.PersistedSvidError, SvidError, ValueError) as err:
            # Never serve with an identity we cannot vouch for; a token can replace it.
            if join_token is None:
                raise NoIdentity(
                    f"the SVID in {self._data_dir} is unusable ({err}) and no --join-token was given"
                ) from err
            log.warning("persisted_svid_unusable", data_dir=str(self._data_dir), error=str(err))
            persisted = None
        if persisted is not None and now < persisted.chain[0].not_valid_after_utc:
            await self._install(persisted.key, persisted.chain, persisted.bundle_pem, save=False)
            # A restart renews straight away: the persisted SVID may be close to expiry,
            # and a fresh one proves the control plane still knows us.
            self._renew_at = now
            log.info(
                "svid_loaded",
                spiffe_id=str(self.spiffe_id),
                not_after=_rfc3339(self._require_info().not_after),
                data_dir=str(self._data_dir),
                join_token_ignored=join_token is not None,
            )
            return
        if join_token is None:
            if persisted is not None:
                raise NoIdentity(
                    f"the SVID in {self._data_dir} expired at "
                    f"{_rfc3339(persisted.chain[0].not_valid_after_utc)} and no --join-token was given"
                )
            raise NoIdentity(
                f"no SVID in {self._data_dir} and no --join-token given"
                " (create one with `trustmesh token create`)"
            )
        await self._join(join_token)

    async def _join(self, token: JoinToken) -> None:
        attempt = 0
        while True:
            try:
                issued = await self._client.join(token, new_key())
            except ControlPlaneRejected:
                log.error("join_refused", token_id=token.token_id)
                raise
            except ControlPlaneError as err:
                delay = backoff_delay(attempt, self._rng, self._backoff_cap)
                log.warning(
                    "join_failed",
                    token_id=token.token_id,
                    error=str(err),
                    attempt=attempt,
                    retry_in=round(delay, 3),
                )
                attempt += 1
                await self._sleep_seconds(delay)
                continue
            await self._install_svid(issued)
            log.info(
                "svid_joined",
                spiffe_id=str(self.spiffe_id),
                token_id=token.token_id,
                not_after=_rfc3339(self._require_info().not_after),
            )
            return

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew and refresh the bundle until cancelled (call after `start()`)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._renew_loop)
            nursery.start_soon(self._bundle_loop)
            nursery.start_soon(self._expiry_watch)
            task_status.started()

    def renew_soon(self) -> None:
        """Ask for a renewal now (tests, and an operator poking the admin port)."""
        self._renew_now.set()

    async def _renew_loop(self) -> None:
        attempt = 0
        while True:
            assert self._renew_at is not None
            await self._sleep_until(self._renew_at, wake=self._renew_now)
            self._renew_now = trio.Event()
            try:
                await self._renew()
            except ControlPlaneError as err:
                delay = backoff_delay(attempt, self._rng, self._backoff_cap)
                attempt += 1
                info = self._require_info()
                outcome = "refused" if isinstance(err, ControlPlaneRejected) else "error"
                if self._metrics:
                    self._metrics.renewals.labels(outcome=outcome).inc()
                if isinstance(err, ControlPlaneRejected) and err.error == JOIN_TOKEN_NEEDED:
                    # Past the recovery grace: only an operator can help. Keep asking at the
                    # cap (the grace may be raised), but say plainly what is needed.
                    if not self._needs_join_token:
                        log.error(
                            "svid_needs_join_token",
                            spiffe_id=str(info.spiffe_id),
                            serial=format(info.serial, "x"),
                            not_after=_rfc3339(info.not_after),
                            error=str(err),
                            action="restart the sidecar with a new --join-token",
                        )
                    self._needs_join_token = True
                    delay = self._backoff_cap
                log.warning(
                    "svid_renew_failed",
                    spiffe_id=str(info.spiffe_id),
                    error=str(err),
                    outcome=outcome,
                    attempt=attempt,
                    retry_in=round(delay, 3),
                    expires_in=round((info.not_after - self._clock.now()).total_seconds(), 3),
                )
                self._renew_at = self._clock.now() + timedelta(seconds=delay)
                continue
            attempt = 0
            if self._metrics:
                self._metrics.renewals.labels(outcome="ok").inc()

    async def _renew(self) -> None:
        old = self._require_info()
        was_expired = self._clock.now() >= old.not_after
        issued = await self._client.renew(self._require_svid(), new_key())
        if issued.spiffe_id != str(old.spiffe_id):
            # The control plane must renew the identity we presented; anything else is a bug
            # or an attack, and switching identity silently would be worse than failing.
            raise ControlPlaneRejected(
                f"renewal returned {issued.spiffe_id}, expected {old.spiffe_id}: keeping the current SVID"
            )
        await self._install_svid(issued)
        new = self._require_info()
        log.info(
            "svid_renewed",
            spiffe_id=str(new.spiffe_id),
            serial=format(new.serial, "x"),
            previous_serial=format(old.serial, "x"),
            not_after=_rfc3339(new.not_after),
        )
        if was_expired:
            # The control plane accepted our expired SVID within its recovery grace.
            log.info(
                "svid_recovered",
                spiffe_id=str(new.spiffe_id),
                previous_serial=format(old.serial, "x"),
                expired_for_s=round((self._clock.now() - old.not_after).total_seconds(), 3),
            )

    async def _bundle_loop(self) -> None:
        while True:
            await self._sleep_seconds(self._bundle_refresh.total_seconds())
            if not self.serving():
                continue  # our SVID cannot authenticate us; renewal will bring a bundle
            try:
                pem = await self._client.fetch_bundle(
                    self._require_svid(), self._require_info().spiffe_id.trust_domain
                )
            except ControlPlaneError as err:
                log.warning("bundle_refresh_failed", error=str(err))
                continue
            if pem != self._bundle_pem:
                await self._install_bundle(pem)

    async def _expiry_watch(self) -> None:
        """Log the moment we fail closed (the switch itself is `serving()`, computed per call)."""
        while True:
            info = self._require_info()
            await self._sleep_until(info.not_after)
            if self._info is info and not self.serving():
                log.error(
                    "svid_expired",
                    spiffe_id=str(info.spiffe_id),
                    not_after=_rfc3339(info.not_after),
                    action="refusing new connections",
                )
                if self._metrics:
                    self._metrics.serving.set(0)
                # Wait for a renewal to install another SVID before watching again.
                while self._info is info:
                    await self._sleep_seconds(MAX_SLEEP_SLICE)

    # ----- installing a new SVID or bundle -----

    async def _install_svid(self, issued: Svid) -> None:
        chain = tuple(x509.load_pem_x509_certificates(issued.chain_pem))
        await self._install(issued.key, chain, issued.bundle_pem, save=True)

    async def _install(
        self,
        key: ec.EllipticCurvePrivateKey,
        chain: tuple[x509.Certificate, ...],
        bundle_pem: bytes,
        *,
        save: bool,
    ) -> None:
        async with self._install_lock:
            await self._install_locked(key, chain, bundle_pem, save=save)

    async def _install_locked(
        self,
        key: ec.EllipticCurvePrivateKey,
        chain: tuple[x509.Certificate, ...],
        bundle_pem: bytes,
        *,
        save: bool,
    ) -> None:
        leaf = chain[0]
        spiffe_id = leaf_spiffe_id(leaf)
        bundle = TrustBundle.from_pem(spiffe_id.trust_domain, bundle_pem)
        if save:
            persisted = svid_files.PersistedSvid(key, chain, bundle_pem)
            await trio.to_thread.run_sync(svid_files.save, self._data_dir, persisted)
        server, client = await trio.to_thread.run_sync(
            self._build_contexts, svid_files.chain_pem(chain), svid_files.key_pem(key), bundle_pem
        )
        info = SvidInfo(spiffe_id, leaf.serial_number, leaf.not_valid_before_utc, leaf.not_valid_after_utc)
        # One assignment each: a handshake starting now sees either the old pair or the new.
        self._contexts = _Contexts(server, client)
        self._bundle = bundle
        self._bundle_pem = bundle_pem
        self._svid = Svid(
            str(spiffe_id), svid_files.chain_pem(chain), key, bundle_pem, leaf.not_valid_after_utc
        )
        self._window = (info.not_before.timestamp(), info.not_after.timestamp())
        self._info = info
        self._needs_join_token = False
        self._renew_at = renewal_time(self._clock.now(), info.not_after, self._rng)
        if self._metrics:
            _show_certificates(self._metrics, info, bundle)
            self._metrics.serving.set(1 if self.serving() else 0)

    async def install_bundle(self, bundle_pem: bytes) -> None:
        """A trust bundle pushed by the control plane: new handshakes use it at once."""
        if bundle_pem == self._bundle_pem:
            return
        await self._install_bundle(bundle_pem)

    async def _install_bundle(self, bundle_pem: bytes) -> None:
        async with self._install_lock:
            await self._install_bundle_locked(bundle_pem)

    async def _install_bundle_locked(self, bundle_pem: bytes) -> None:
        info = self._require_info()
        bundle = TrustBundle.from_pem(info.spiffe_id.trust_domain, bundle_pem)
        await trio.to_thread.run_sync(svid_files.save_bundle, self._data_dir, bundle_pem)
        svid = self._require_svid()
        server, client = await trio.to_thread.run_sync(
            self._build_contexts, svid.chain_pem, svid.key_pem(), bundle_pem
        )
        self._contexts = _Contexts(server, client)
        self._bundle = bundle
        self._bundle_pem = bundle_pem
        self._svid = dataclasses.replace(svid, bundle_pem=bundle_pem)
        if self._metrics:
            _show_certificates(self._metrics, info, bundle)
        log.info(
            "bundle_updated", trust_domain=info.spiffe_id.trust_domain, roots=len(bundle.x509_authorities)
        )

    # ----- time -----

    async def _sleep_until(self, when: datetime, wake: trio.Event | None = None) -> None:
        """Sleep until the injected clock reads `when` (or `wake` is set), in bounded slices."""
        while True:
            remaining = (when - self._clock.now()).total_seconds()
            if remaining <= 0 or (wake is not None and wake.is_set()):
                return
            with trio.move_on_after(min(remaining, MAX_SLEEP_SLICE)):
                if wake is not None:
                    await wake.wait()
                    return
                await trio.sleep_forever()

    async def _sleep_seconds(self, seconds: float) -> None:
        await self._sleep_until(self._clock.now() + timedelta(seconds=seconds))

    def _require_svid(self) -> Svid:
        if self._svid is None:
            raise RuntimeError("no SVID yet: start() has not completed")
        return self._svid

    def _require_info(self) -> SvidInfo:
        if self._info is None:
            raise RuntimeError("no SVID yet: start() has not completed")
        return self._info

    def _require_contexts(self) -> _Contexts:
        if self._contexts is None:
            raise RuntimeError("no TLS contexts yet: start() has not completed")
        return self._contexts


def _check_persisted(persisted: svid_files.PersistedSvid, now: datetime) -> None:
    """The persisted chain must still be a valid X.509-SVID under the persisted bundle.

    The files are ours and 0600, but a restored backup, a half-finished manual edit or a
    bundle from another deployment must not come back to life as our identity.
    """
    spiffe_id = leaf_spiffe_id(persisted.chain[0])
    bundle = TrustBundle.from_pem(spiffe_id.trust_domain, persisted.bundle_pem)
    validate_x509_svid(list(persisted.chain), bundle, now)


def _rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")
