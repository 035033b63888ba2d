"""Issuance workflows: join, renew, JWT-SVID and token creation.

This is the seam between the outside (HTTP handlers, CLI commands) and the CA plus the
store. Both the API and the CLI call these functions, so there is one code path per
job. Everything here decides *whether* to issue; the `CertificateAuthority` only
signs, and it is the only thing that touches a private key.

Order of a join, chosen so that a failed request changes nothing:
1. parse the token and check the CSR (pure, no state),
2. look the token up and check secret, expiry and use (read only),
3. sign the SVID (the CA changes no persistent state),
4. consume the token and append the audit row in one transaction with a conditional
   UPDATE; if a concurrent join won the race, the signed certificate is thrown away.

Renewal normally needs a currently valid SVID. One exception, `_recover`: an SVID that
expired while its holder could not reach us (control plane down) may be renewed once,
within `expired_renew_grace`, because the mTLS handshake still proves possession of its
key and the audit log proves we issued it and nothing has replaced it since.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, NoReturn

import structlog
import trio
from cryptography import x509
from prometheus_client import Counter

from trustmesh.ca import CertificateAuthority, CsrRejected, IssuedX509Svid, check_csr, spki_fingerprint
from trustmesh.ca.join_token import DEFAULT_JOIN_TOKEN_TTL, InvalidJoinToken, JoinToken, secret_matches
from trustmesh.clock import Clock
from trustmesh.control.errors import TOKEN_REJECTED_DETAIL, ApiError
from trustmesh.durations import format_duration
from trustmesh.identity import SpiffeId, SvidError, TrustBundle, validate_x509_svid
from trustmesh.store import (
    AlreadyRecorded,
    CaKeyRecord,
    IssuedSvidRecord,
    JoinTokenRecord,
    Registration,
    Store,
    TokenConsumeFailed,
)
from trustmesh.store.base import CaKeyKind

if TYPE_CHECKING:  # OpenTelemetry is imported only when tracing is on
    from opentelemetry.trace import Tracer

log = structlog.get_logger(__name__)

SVIDS_ISSUED = Counter("trustmesh_svids_issued", "X.509-SVIDs issued by the control plane", ["method"])
JWT_SVIDS_ISSUED = Counter("trustmesh_jwt_svids_issued", "JWT-SVIDs issued by the control plane")
JOINS_REFUSED = Counter("trustmesh_joins_refused", "Joins refused, by the token's exact fault", ["reason"])

# A JWT-SVID names its audiences; a handful is plenty, and a cap keeps tokens small.
MAX_AUDIENCES = 16
MAX_AUDIENCE_LEN = 2048
# How long after expiry an SVID may still be renewed (`_recover`): a day covers a control
# plane down overnight, yet a stolen key whose SVID lapsed is useless after it (and only
# while the SVID was never renewed). `--expired-renew-grace 0s` turns recovery off.
DEFAULT_EXPIRED_RENEW_GRACE = timedelta(hours=24)
# What a refused recovery tells the caller to do; the sidecar shows it on /ready.
JOIN_TOKEN_NEEDED = "join_token_needed"
# Validated caller chains remembered (see `_ValidatedChains`): more than the workloads
# that renew within one SVID lifetime on a busy control plane; the oldest go first.
MAX_VALIDATED_CHAINS = 4096


@dataclass(frozen=True)
class IssuedResponse:
    """The body of a successful join or renew (the API contract's shape)."""

    spiffe_id: str
    svid_pem: str
    bundle_pem: str
    expires_at: datetime
    serial: str

    def to_json(self) -> dict[str, str]:
        return {
            "spiffe_id": self.spiffe_id,
            "svid": self.svid_pem,
            "bundle": self.bundle_pem,
            "expires_at": rfc3339(self.expires_at),
        }


def rfc3339(value: datetime) -> str:
    """UTC RFC 3339 with a `Z`, second precision (what certificates carry)."""
    # isoformat of the naive UTC time is the same text as strftime("%Y-%m-%dT%H:%M:%SZ")
    # at a quarter of the cost; it runs twice per issuance.
    return value.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def serial_text(serial: int) -> str:
    """Serials are stored and shown as lowercase hex, as `openssl x509 -serial` does (but lowercase)."""
    return format(serial, "x")


class _ValidatedChains:
    """Caller chains that passed `validate_x509_svid`, so a kept-alive caller is not re-verified per request.

    Path validation (signatures, CA flags, name chaining, SPIFFE leaf rules) depends
    only on the chain and the roots; time is the one input that changes. So an entry is
    keyed by the chain and the bundle's roots exactly (a root leaving the bundle misses),
    and a hit still checks the current time against every certificate's validity. Only
    a time strictly inside all validity periods is answered from memory; anything at or
    past an edge goes through `validate_x509_svid` again, which raises the exact error.
    """

    def __init__(self, max_entries: int = MAX_VALIDATED_CHAINS) -> None:
        self._max = max_entries
        self._entries: dict[
            tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]],
            tuple[SpiffeId, datetime, datetime],
        ] = {}

    def validate(self, chain: Sequence[x509.Certificate], bundle: TrustBundle, now: datetime) -> SpiffeId:
        key = (tuple(chain), tuple(bundle.x509_authorities))
        hit = self._entries.get(key)
        if hit is not None:
            spiffe_id, not_before, not_after = hit
            if not_before < now < not_after:
                return spiffe_id
        spiffe_id = validate_x509_svid(chain, bundle, now)
        if hit is None:
            if len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]
            not_before = max(c.not_valid_before_utc for c in chain)
            not_after = min(c.not_valid_after_utc for c in chain)
            self._entries[key] = (spiffe_id, not_before, not_after)
        return spiffe_id


class Issuer:
    """Decides who gets which identity; owns no keys (the CA does) and no rows (the store does)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        store: Store,
        clock: Clock,
        *,
        svid_ttl: timedelta | None = None,
        expired_renew_grace: timedelta = DEFAULT_EXPIRED_RENEW_GRACE,
        tracer: Tracer | None = None,
    ) -> None:
        self.ca = ca
        # OpenTelemetry tracer for join/renew spans; None when tracing is off (no endpoint).
        self.tracer = tracer
        self.store = store
        self.clock = clock
        self.svid_ttl = svid_ttl
        self.expired_renew_grace = expired_renew_grace
        # Recovery checks "not renewed yet" and then records the renewal: one at a time in
        # this process, so two racing requests with one expired SVID get one SVID.
        self._recovery_lock = trio.Lock()
        self._validated = _ValidatedChains()
        self._bundle_pem: tuple[tuple[x509.Certificate, ...], str] = ((), "")

    # -- tokens --------------------------------------------------------------------------

    async def create_token(
        self, spiffe_id: SpiffeId, service: str, ttl: timedelta = DEFAULT_JOIN_TOKEN_TTL
    ) -> JoinToken:
        """A new single-use token for `spiffe_id`; the store keeps only its hash."""
        trust_domain = self.ca.bundle().trust_domain
        if spiffe_id.trust_domain != trust_domain:
            raise ValueError(f"SPIFFE ID {spiffe_id} is not in this CA's trust domain {trust_domain!r}")
        if not spiffe_id.path:
            raise ValueError(f"SPIFFE ID {spiffe_id} has no path; a workload ID needs one (X-04)")
        if not service:
            raise ValueError("service name must not be empty")
        if ttl <= timedelta(0):
            raise ValueError("token TTL must be positive")
        token = JoinToken.generate(self.ca.fingerprint())
        now = self.clock.now()
        await self.store.create_join_token(
            JoinTokenRecord(
                id=token.token_id,
                secret_hash=token.secret_hash,
                spiffe_id=str(spiffe_id),
                service=service,
                created_at=now,
                expires_at=now + ttl,
            )
        )
        await self.store.put_registration(
            Registration(service=service, spiffe_id=str(spiffe_id), created_at=now)
        )
        log.info(
            "join_token_created",
            token_id=token.token_id,
            spiffe_id=str(spiffe_id),
            service=service,
            expires_at=rfc3339(now + ttl),
        )
        return token

    # -- X.509-SVIDs ---------------------------------------------------------------------

    async def join(self, token_text: str, csr_pem: str) -> IssuedResponse:
        """Exchange a join token and a CSR for an SVID (the token's SPIFFE ID, never the CSR's)."""
        return await self._traced("join", lambda: self._join(token_text, csr_pem))

    async def _traced(
        self, name: Literal["join", "renew"], issue: Callable[[], Awaitable[IssuedResponse]]
    ) -> IssuedResponse:
        """Run one issuance inside a control-plane span naming what it issued (when tracing)."""
        if self.tracer is None:
            return await issue()
        from trustmesh.tracing.spans import control_span

        with control_span(self.tracer, name) as span:
            issued = await issue()
            span.set_attribute("trustmesh.spiffe_id", issued.spiffe_id)
            span.set_attribute("trustmesh.svid.serial", issued.serial)
            return issued

    async def _join(self, token_text: str, csr_pem: str) -> IssuedResponse:
        try:
            token = JoinToken.parse(token_text)
        except InvalidJoinToken as exc:
            self._token_refused("malformed", None, str(exc))
        csr = _check_csr(csr_pem)
        record = await self.store.get_join_token(token.token_id)
        now = self.clock.now()
        if record is None:
            self._token_refused("unknown", token.token_id)
        if not secret_matches(token.secret, record.secret_hash):
            self._token_refused("wrong_secret", token.token_id)
        if record.used_at is not None:
            self._token_refused("used", token.token_id, f"used by serial {record.used_by_serial}")
        if record.expires_at <= now:
            self._token_refused("expired", token.token_id)
        spiffe_id = SpiffeId.parse(record.spiffe_id)
        issued = self.ca.sign_x509_svid(csr, spiffe_id, ttl=self.svid_ttl)
        serial = serial_text(issued.serial)
        auth = f"join-token:{token.token_id}"
        try:
            await self.store.consume_join_token_and_record(
                token.token_id,
                record.secret_hash,
                now,
                IssuedSvidRecord(
                    serial=serial,
                    spiffe_id=str(spiffe_id),
                    not_after=issued.not_after,
                    issued_at=now,
                    auth=auth,
                ),
            )
        except TokenConsumeFailed as exc:
            # Lost a race with a concurrent join of the same token: the certificate just
            # signed is discarded, never returned.
            self._token_refused(exc.reason, token.token_id, "lost the single-use race")
        return self._issued(spiffe_id, issued, serial, auth, "join")

    async def renew(self, peer_chain: Sequence[x509.Certificate], csr_pem: str) -> IssuedResponse:
        """A fresh SVID for the same SPIFFE ID as the caller's current, valid SVID.

        A caller whose SVID has expired goes through `_recoverable` instead (audit `recover:`).
        """
        return await self._traced("renew", lambda: self._renew(peer_chain, csr_pem))

    async def _renew(self, peer_chain: Sequence[x509.Certificate], csr_pem: str) -> IssuedResponse:
        if not peer_chain:
            self.authenticate(peer_chain)  # the 401
        try:
            caller = self._validated.validate(peer_chain, self.ca.bundle(), self.clock.now())
        except SvidError as exc:
            if exc.reason != "expired":
                log.warning("svid_auth_refused", reason=exc.reason, detail=str(exc))
                raise ApiError(403, "svid_rejected", f"client SVID rejected: {exc}") from exc
            csr = _check_csr(csr_pem)
            async with self._recovery_lock:
                caller = await self._recoverable(peer_chain)
                return await self._renew_for(caller, peer_chain, csr, "recover")
        return await self._renew_for(caller, peer_chain, _check_csr(csr_pem), "renew")

    async def _renew_for(
        self,
        caller: SpiffeId,
        peer_chain: Sequence[x509.Certificate],
        csr: x509.CertificateSigningRequest,
        method: str,
    ) -> IssuedResponse:
        issued = self.ca.sign_x509_svid(csr, caller, ttl=self.svid_ttl)
        serial = serial_text(issued.serial)
        caller_serial = serial_text(peer_chain[0].serial_number)
        auth = f"{method}:{caller_serial}"
        try:
            await self.store.record_svid(
                IssuedSvidRecord(
                    serial=serial,
                    spiffe_id=str(caller),
                    not_after=issued.not_after,
                    issued_at=self.clock.now(),
                    auth=auth,
                )
            )
        except AlreadyRecorded:
            if method != "recover":
                raise  # a serial collision: 2^-159, not worth an answer of its own
            # Another replica recovered this expired SVID a moment ago (the recovery lock
            # only orders this process): the certificate just signed is discarded.
            self._recovery_refused(
                "already_renewed",
                caller_serial,
                peer_chain[0].not_valid_after_utc,
                "it has already been renewed",
            )
        return self._issued(caller, issued, serial, auth, method)

    async def _recoverable(self, peer_chain: Sequence[x509.Certificate]) -> SpiffeId:
        """The SPIFFE ID of an expired caller SVID that may still be renewed, or a 403 saying why not.

        TLS has proved the caller holds the leaf's key and that the chain leads to one of
        our roots (OpenSSL checks everything but time, see tls.py). Here: it expired less
        than the grace ago; it was a valid SVID of ours at the last moment of its life,
        under a root still in today's bundle; the audit log says we issued this serial to
        this SPIFFE ID; and no renewal or recovery has been made with it since, so a key
        that was rotated away (or stolen and used once) cannot come back.
        """
        leaf = peer_chain[0]
        serial = serial_text(leaf.serial_number)
        expired_at = leaf.not_valid_after_utc
        now = self.clock.now()
        grace = self.expired_renew_grace
        if grace <= timedelta(0):
            self._recovery_refused("disabled", serial, expired_at, "recovery of expired SVIDs is turned off")
        if now - expired_at > grace:
            self._recovery_refused(
                "beyond_grace",
                serial,
                expired_at,
                f"that is more than the recovery grace ({format_duration(grace)}) ago",
            )
        try:
            # One second before notAfter every certificate of a chain we built was valid
            # (an SVID never outlives its intermediate); the roots are today's bundle.
            spiffe_id = validate_x509_svid(peer_chain, self.ca.bundle(), expired_at - timedelta(seconds=1))
        except SvidError as exc:
            self._recovery_refused(exc.reason, serial, expired_at, f"it does not validate: {exc}")
        record = await self.store.get_svid(serial)
        if record is None or record.spiffe_id != str(spiffe_id):
            self._recovery_refused(
                "not_issued", serial, expired_at, f"no record of issuing it to {spiffe_id}"
            )
        used = {f"renew:{serial}", f"recover:{serial}"}
        # A scan of the audit log: recovery is rare (an outage), and the log has no index by auth.
        if any(row.auth in used for row in await self.store.list_svids()):
            self._recovery_refused("already_renewed", serial, expired_at, "it has already been renewed")
        log.info(
            "svid_recovery_accepted",
            spiffe_id=str(spiffe_id),
            serial=serial,
            expired_at=rfc3339(expired_at),
            expired_for_s=int((now - expired_at).total_seconds()),
        )
        return spiffe_id

    def _recovery_refused(self, reason: str, serial: str, expired_at: datetime, why: str) -> NoReturn:
        log.warning("svid_recovery_refused", reason=reason, serial=serial, expired_at=rfc3339(expired_at))
        raise ApiError(
            403,
            JOIN_TOKEN_NEEDED,
            f"client SVID (serial {serial}) expired at {rfc3339(expired_at)} and cannot be renewed: {why}; "
            "a new join token is needed (trustmesh token create)",
        )

    async def jwt_svid(self, peer_chain: Sequence[x509.Certificate], audience: Sequence[str]) -> str:
        """A JWT-SVID for the authenticated caller, for the given audiences."""
        caller = self.authenticate(peer_chain)
        if not audience or len(audience) > MAX_AUDIENCES:
            raise ApiError(400, "invalid_audience", f"audience must list 1 to {MAX_AUDIENCES} values (J-07)")
        for value in audience:
            if not isinstance(value, str) or not value or len(value) > MAX_AUDIENCE_LEN:
                raise ApiError(400, "invalid_audience", "each audience must be a non-empty string")
        token = self.ca.sign_jwt_svid(caller, list(audience))
        JWT_SVIDS_ISSUED.inc()
        log.info("jwt_svid_issued", spiffe_id=str(caller), audience=list(audience))
        return token

    def authenticate(self, peer_chain: Sequence[x509.Certificate]) -> SpiffeId:
        """The caller's SPIFFE ID from its TLS client chain, validated against the current bundle.

        TLS already proved the caller holds the leaf's key; this checks that the leaf is
        a valid SVID of our trust domain right now (by our clock, not OpenSSL's).
        """
        if not peer_chain:
            raise ApiError(401, "unauthenticated", "this endpoint needs a client certificate (mutual TLS)")
        try:
            return self._validated.validate(peer_chain, self.ca.bundle(), self.clock.now())
        except SvidError as exc:
            log.warning("svid_auth_refused", reason=exc.reason, detail=str(exc))
            raise ApiError(403, "svid_rejected", f"client SVID rejected: {exc}") from exc

    def _issued(
        self, spiffe_id: SpiffeId, issued: IssuedX509Svid, serial: str, auth: str, method: str
    ) -> IssuedResponse:
        SVIDS_ISSUED.labels(method=method).inc()
        # The one log event of an issuance (the CA itself does not log each signature).
        log.info(
            "svid_granted",
            spiffe_id=str(spiffe_id),
            serial=serial,
            expires_at=rfc3339(issued.not_after),
            auth=auth,
            method=method,
            intermediate=issued.intermediate,
        )
        return IssuedResponse(
            spiffe_id=str(spiffe_id),
            svid_pem=issued.chain_pem().decode("ascii"),
            bundle_pem=self._current_bundle_pem(),
            expires_at=issued.not_after,
            serial=serial,
        )

    def _current_bundle_pem(self) -> str:
        """The bundle's roots as PEM, encoded again only when the roots change."""
        bundle = self.ca.bundle()
        roots = tuple(bundle.x509_authorities)
        if roots != self._bundle_pem[0]:
            self._bundle_pem = (roots, bundle.to_pem().decode("ascii"))
        return self._bundle_pem[1]

    def _token_refused(self, reason: str, token_id: str | None, detail: str = "") -> NoReturn:
        log.warning("join_refused", reason=reason, token_id=token_id, detail=detail)
        JOINS_REFUSED.labels(reason=reason).inc()
        raise ApiError(403, "invalid_token", TOKEN_REJECTED_DETAIL)


async def record_ca_keys(store: Store, ca: CertificateAuthority, now: datetime) -> None:
    """Mirror the CA's roots (those in the bundle) and signing intermediate into the store's metadata table.

    The CA's own files stay the source of truth; this table is what an operator (or a
    second control plane sharing a PostgreSQL store) can query without key access.
    """
    certs: list[tuple[CaKeyKind, x509.Certificate]] = [("root", r) for r in ca.bundle().x509_authorities]
    certs.append(("intermediate", ca.intermediate_certificate))
    for kind, cert in certs:
        await store.put_ca_key(
            CaKeyRecord(
                fingerprint=spki_fingerprint(cert),
                kind=kind,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                created_at=now,
            )
        )


def _check_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    try:
        return check_csr(csr_pem.encode("utf-8"))
    except CsrRejected as exc:
        raise ApiError(400, "invalid_csr", str(exc)) from exc
