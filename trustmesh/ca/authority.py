"""The trustmesh certificate authority: the only holder of signing keys.

What an X.509-SVID is, as this CA makes it (`_leaf_profile` below, X-01..X-17):

    leaf (the SVID)      subject empty; SAN = exactly one URI, the SPIFFE ID (critical,
                         because the subject is empty), plus optional DNS/IP SANs;
                         BasicConstraints cA=false (critical); KeyUsage digitalSignature
                         only (critical); EKU serverAuth + clientAuth; SKI; AKI;
                         key = the workload's key from its CSR; ECDSA-SHA256 signature;
                         not_before = now - 30 s, not_after = min(now + ttl, intermediate's)
      signed by
    intermediate         CN "trustmesh intermediate CA <id>"; SAN URI spiffe://<td>;
                         cA=true pathlen 0; KeyUsage keyCertSign + cRLSign (critical);
                         P-256; 24 h by default, renewed at half-life, never past its root
      signed by
    root                 CN "trustmesh root CA <id>"; SAN URI spiffe://<td> (SV-03);
                         self-signed; cA=true pathlen 1; KeyUsage keyCertSign + cRLSign
                         (critical); P-256; 1 year by default. Roots are the trust bundle.

JWT-SVIDs are ES256 tokens signed by a separate P-256 key whose public half is published
in the bundle as a `jwt-svid` JWK under its `kid`.

Rotation, as `rotate_if_due()` and `rotate_root()` carry it out (all times from the
injected clock; everything persisted in ca.json so `load` resumes mid-rotation):

  Intermediate (automatic). When the active intermediate is past half its lifetime, a new
  intermediate is signed by the active root and becomes the signer. The old one stays
  valid: chains already issued carry it, and every SVID it signed expires no later than
  it does (SVIDs are capped at their signer's not_after). Its private key is deleted.

  Root (operator-driven, `trustmesh ca rotate-root`), in three steps:
    1. prepare: `rotate_root(overlap)` creates root R2 (and a new JWT key K2), marks them
       "prepared" with activate_at = now + overlap, and publishes them in `bundle()` at
       once (spiffe_sequence goes up). R1 and K1 still sign everything. Workloads pick up
       the new bundle on their next renewal or bundle refresh, so they trust both roots.
    2. activate: the first `rotate_if_due()` at or after activate_at makes R2 the active
       root, signs a new intermediate under R2 and makes it the signer, and makes K2 the
       JWT signer. R1 and K1 become "retired"; R1's private key is deleted. New SVIDs
       chain to R2; `fingerprint()` now names R2.
    3. drop: R1 stays in `bundle()` while any intermediate it signed is unexpired (every
       SVID it anchors ends no later than that intermediate), K1 for MAX_JWT_SVID_TTL
       after retirement; then both leave the bundle (sequence goes up again) and their
       files are removed.
  Overlap should exceed the time every workload needs to fetch a bundle: the default
  (24 h) is many SVID lifetimes and bundle refresh hints.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import jwt
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import Counter

from trustmesh.ca.csr import check_public_key, csr_public_key
from trustmesh.ca.keystore import CaStateError, KeyStore
from trustmesh.clock import Clock, SystemClock
from trustmesh.identity.bundle import PublicKey, TrustBundle
from trustmesh.identity.spiffe_id import SpiffeId, validate_trust_domain

log = structlog.get_logger("trustmesh.ca")

SVIDS_ISSUED = Counter("trustmesh_ca_svids_issued", "SVIDs signed by the CA", ["type"])
_X509_ISSUED = SVIDS_ISSUED.labels(type="x509")  # resolved once: `labels()` costs on every call
_SHA256 = hashes.SHA256()

DEFAULT_ROOT_TTL = timedelta(days=365)  # long enough that root rotation is a planned event
DEFAULT_INTERMEDIATE_TTL = timedelta(hours=24)  # a stolen signing key is useful for a day at most
DEFAULT_X509_SVID_TTL = timedelta(hours=1)  # SPIRE's default: short, renewed at half-life
DEFAULT_JWT_SVID_TTL = timedelta(minutes=5)  # bearer tokens can be replayed (J-15): keep them short
MAX_JWT_SVID_TTL = timedelta(hours=1)  # also how long a retired JWT key stays in the bundle
DEFAULT_ROOT_OVERLAP = timedelta(hours=24)
BACKDATE = timedelta(seconds=30)  # tolerate this much clock skew between CA and validators
_SERIAL_LIMIT = 2**159  # RFC 5280: at most 20 octets, positive


class CaError(Exception):
    """A CA operation that cannot be carried out in the CA's current state."""


class CaAlreadyInitialised(CaError):
    """`init` on a state directory that already holds a CA."""


@dataclass(frozen=True)
class IssuedX509Svid:
    """A freshly signed X.509-SVID: `chain` is leaf first, then the intermediate (no root)."""

    spiffe_id: SpiffeId
    chain: list[x509.Certificate]
    serial: int
    not_after: datetime
    intermediate: str = ""  # id of the signing intermediate, for the issuance log event

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def chain_pem(self) -> bytes:
        leaf, *signers = self.chain
        return b"".join([leaf.public_bytes(serialization.Encoding.PEM), *map(_ca_pem, signers)])


@functools.lru_cache(maxsize=8)
def _ca_pem(cert: x509.Certificate) -> bytes:
    """A signing CA's PEM, encoded once: it follows every leaf the CA signs in the chain it returns."""
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class RootRotation:
    """What `rotate_root` prepared: the new root's fingerprint and when it starts signing."""

    fingerprint: str
    activate_at: datetime


def spki_fingerprint(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's DER SubjectPublicKeyInfo (kubeadm's discovery hash)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


# ----- the certificate profiles: everything that decides what a certificate says -----


def _ca_name(kind: str, cert_id: str) -> x509.Name:
    # The id makes every CA name unique, so path building never confuses an old root or
    # intermediate with its successor during rotation.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustmesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"trustmesh {kind} CA {cert_id}"),
        ]
    )


def _ca_certificate(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    trust_domain: str,
    not_before: datetime,
    not_after: datetime,
    path_length: int,
) -> x509.Certificate:
    """A signing certificate (root or intermediate): X-06, X-08, X-11, X-13, X-14."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(_random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
_LEAF_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)


def _random_serial() -> int:
    return secrets.randbelow(_SERIAL_LIMIT - 1) + 1


def _utc_seconds(t: datetime) -> datetime:
    # X.509 times have one-second resolution; truncating here keeps what we compute equal
    # to what the certificate says.
    return t.astimezone(UTC).replace(microsecond=0)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


# ----- in-memory state -----


@dataclass
class _Root:
    id: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | None  # None once retired (the key file is deleted)
    state: str  # "prepared" | "active" | "retired"
    activate_at: datetime | None = None
    retired_at: datetime | None = None


@dataclass
class _Intermediate:
    id: str
    root_id: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | None  # only the active intermediate keeps its key

    @property
    def authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        """AKI for the leaves it signs, computed once (it is on every issuance's hot path)."""
        if self._aki is None:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        return self._aki

    @property
    def leaf_builder(self) -> x509.CertificateBuilder:
        """The part of every leaf it signs that never changes: names, cA=false, KeyUsage, EKU.

        Builders are immutable (each setter returns a copy after validating its input), so
        this prefix is built once and each issuance adds only what is its own.
        """
        if self._leaf_builder is None:
            self._leaf_builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(self.cert.subject)
                .add_extension(_LEAF_BASIC_CONSTRAINTS, critical=True)
                .add_extension(_LEAF_KEY_USAGE, critical=True)
                .add_extension(_LEAF_EKU, critical=False)
            )
        return self._leaf_builder

    _aki: x509.AuthorityKeyIdentifier | None = None
    _leaf_builder: x509.CertificateBuilder | None = None


@dataclass
class _JwtKey:
    kid: str
    key: ec.EllipticCurvePrivateKey
    state: str  # "prepared" | "active" | "retired"
    retired_at: datetime | None = None


@dataclass(frozen=True)
class _BundleMembers:
    """What `bundle()` holds at times in [computed_at, valid_until): the roots, JWT keys and digest.

    Membership changes only when the CA's state changes (then the memo is dropped) or
    when a retired root, an intermediate or a retired JWT key reaches a deadline, so
    between two deadlines every request can share one computation.
    """

    computed_at: datetime
    valid_until: datetime
    roots: tuple[x509.Certificate, ...]
    jwt_keys: dict[str, PublicKey]
    digest: str

    def fresh_at(self, now: datetime) -> bool:
        return self.computed_at <= now < self.valid_until


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _from_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class CertificateAuthority:
    """Root, intermediate and JWT keys of one trust domain, and everything signed with them."""

    def __init__(
        self,
        store: KeyStore,
        clock: Clock,
        trust_domain: str,
        root_ttl: timedelta,
        intermediate_ttl: timedelta,
    ) -> None:
        # Use `init` or `load`; the constructor only wires state.
        self._store = store
        self._clock = clock
        self.trust_domain = trust_domain
        self.root_ttl = root_ttl
        self.intermediate_ttl = intermediate_ttl
        self._roots: list[_Root] = []
        self._intermediates: list[_Intermediate] = []
        self._jwt_keys: list[_JwtKey] = []
        self._active_intermediate_id = ""
        self._bundle_sequence = 0
        self._bundle_digest = ""
        self._stamp: tuple[int, int] = (0, 0)
        self._next_check = datetime.min.replace(tzinfo=UTC)
        self._td_id = SpiffeId.for_trust_domain(trust_domain)
        self._members: _BundleMembers | None = None  # memo of _bundle_members; see there

    # ----- creation and loading -----

    @classmethod
    def init(
        cls,
        state_dir: Path,
        trust_domain: str,
        *,
        root_ttl: timedelta = DEFAULT_ROOT_TTL,
        intermediate_ttl: timedelta = DEFAULT_INTERMEDIATE_TTL,
        clock: Clock | None = None,
    ) -> CertificateAuthority:
        """Create a new CA (root, intermediate, JWT key) in `state_dir`; refuse if one is there."""
        validate_trust_domain(trust_domain)
        if root_ttl <= timedelta(0) or intermediate_ttl <= timedelta(0):
            raise ValueError("root_ttl and intermediate_ttl must be positive")
        if intermediate_ttl > root_ttl:
            raise ValueError("intermediate_ttl cannot be longer than root_ttl")
        store = KeyStore(Path(state_dir))
        if store.exists():
            raise CaAlreadyInitialised(
                f"{store.root} already holds a CA; refusing to overwrite it "
                "(use a new --state-dir, or remove the old one if you mean to start over)"
            )
        store.create_dirs(Path(state_dir))
        ca = cls(store, clock or SystemClock(), trust_domain, root_ttl, intermediate_ttl)
        try:
            with store.locked():
                now = ca._now()
                root = ca._new_root(now, state="active")
                ca._roots.append(root)
                ca._new_active_intermediate(root, now)
                ca._jwt_keys.append(ca._new_jwt_key(state="active"))
                ca._bundle_sequence = 1
                ca._bundle_digest = ca._bundle_contents_digest(now)
                ca._save()
        except BaseException:
            # A half-written CA (disk full, interrupted) would make every retry refuse with
            # "already holds a CA" while nothing can load it: remove it, so a retry starts clean.
            shutil.rmtree(store.root, ignore_errors=True)
            raise
        log.info(
            "ca_initialised",
            trust_domain=trust_domain,
            state_dir=str(state_dir),
            fingerprint=ca.fingerprint(),
            root_not_after=_iso(root.cert.not_valid_after_utc),
        )
        return ca

    @classmethod
    def load(cls, state_dir: Path, *, clock: Clock | None = None) -> CertificateAuthority:
        """Open the CA that `init` created in `state_dir` (raises `CaStateError` if there is none)."""
        store = KeyStore(Path(state_dir))
        doc = store.read_metadata()
        ca = cls(
            store,
            clock or SystemClock(),
            doc["trust_domain"],
            timedelta(seconds=doc["root_ttl_seconds"]),
            timedelta(seconds=doc["intermediate_ttl_seconds"]),
        )
        ca._apply_metadata(doc)
        return ca

    def _apply_metadata(self, doc: dict[str, Any]) -> None:
        self._members = None
        s = self._store
        self._stamp = s.metadata_stamp()
        try:
            self._roots = [
                _Root(
                    id=r["id"],
                    cert=s.read_cert(r["id"]),
                    key=None if r["state"] == "retired" else s.read_key(r["id"]),
                    state=r["state"],
                    activate_at=_from_iso(r.get("activate_at")),
                    retired_at=_from_iso(r.get("retired_at")),
                )
                for r in doc["roots"]
            ]
            active_id = doc["active_intermediate"]
            self._intermediates = [
                _Intermediate(
                    id=i["id"],
                    root_id=i["root_id"],
                    cert=s.read_cert(i["id"]),
                    key=s.read_key(i["id"]) if i["id"] == active_id else None,
                )
                for i in doc["intermediates"]
            ]
            self._jwt_keys = [
                _JwtKey(
                    kid=k["kid"],
                    key=s.read_key(k["kid"]),
                    state=k["state"],
                    retired_at=_from_iso(k.get("retired_at")),
                )
                for k in doc["jwt_keys"]
            ]
            self._active_intermediate_id = active_id
            self._bundle_sequence = int(doc["bundle_sequence"])
            self._bundle_digest = str(doc["bundle_digest"])
        except (KeyError, TypeError, ValueError) as err:
            raise CaStateError(f"{s.metadata_path} is inconsistent: {err!r}") from err
        self._active_intermediate()  # fails early if the metadata names no usable signer
        self._next_check = datetime.min.replace(tzinfo=UTC)

    def _save(self) -> None:
        doc = {
            "version": 1,
            "trust_domain": self.trust_domain,
            "root_ttl_seconds": int(self.root_ttl.total_seconds()),
            "intermediate_ttl_seconds": int(self.intermediate_ttl.total_seconds()),
            "roots": [
                {
                    "id": r.id,
                    "state": r.state,
                    "activate_at": _iso(r.activate_at),
                    "retired_at": _iso(r.retired_at),
                    "fingerprint": spki_fingerprint(r.cert),
                }
                for r in self._roots
            ],
            "intermediates": [{"id": i.id, "root_id": i.root_id} for i in self._intermediates],
            "active_intermediate": self._active_intermediate_id,
            "jwt_keys": [
                {"kid": k.kid, "state": k.state, "retired_at": _iso(k.retired_at)} for k in self._jwt_keys
            ],
            "bundle_sequence": self._bundle_sequence,
            "bundle_digest": self._bundle_digest,
        }
        self._members = None
        self._store.write_metadata(doc)
        self._stamp = self._store.metadata_stamp()
        self._next_check = datetime.min.replace(tzinfo=UTC)

    def _sync(self) -> None:
        """Re-read ca.json if another process (the CLI, another server) committed since we did."""
        if self._store.metadata_stamp() != self._stamp:
            self._apply_metadata(self._store.read_metadata())
            log.info("ca_state_reloaded", trust_domain=self.trust_domain)

    # ----- key and certificate creation -----

    def _now(self) -> datetime:
        return _utc_seconds(self._clock.now())

    def _new_root(self, now: datetime, *, state: str, activate_at: datetime | None = None) -> _Root:
        root_id = _new_id("root")
        key = ec.generate_private_key(ec.SECP256R1())
        name = _ca_name("root", root_id)
        cert = _ca_certificate(
            subject=name,
            public_key=key.public_key(),
            issuer=name,
            issuer_key=key,
            trust_domain=self.trust_domain,
            not_before=now - BACKDATE,
            not_after=now + self.root_ttl,
            path_length=1,
        )
        self._store.write_key(root_id, key)
        self._store.write_cert(root_id, cert)
        return _Root(root_id, cert, key, state, activate_at=activate_at)

    def _new_active_intermediate(self, root: _Root, now: datetime) -> _Intermediate:
        if root.key is None:
            raise CaError(f"root {root.id} has no private key")
        # Never outlive the root: an intermediate past its root's expiry would be unverifiable.
        not_after = min(now + self.intermediate_ttl, root.cert.not_valid_after_utc)
        if not_after <= now:
            raise CaError(f"root {root.id} has expired; rotate the root (`trustmesh ca rotate-root`)")
        int_id = _new_id("int")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _ca_certificate(
            subject=_ca_name("intermediate", int_id),
            public_key=key.public_key(),
            issuer=root.cert.subject,
            issuer_key=root.key,
            trust_domain=self.trust_domain,
            not_before=now - BACKDATE,
            not_after=not_after,
            path_length=0,
        )
        self._store.write_key(int_id, key)
        self._store.write_cert(int_id, cert)
        previous = self._active_intermediate_id
        inter = _Intermediate(int_id, root.id, cert, key)
        self._intermediates.append(inter)
        self._active_intermediate_id = int_id
        for old in self._intermediates:
            if old.id != int_id and old.key is not None:
                # A superseded intermediate never signs again: its key has no reason to exist.
                old.key = None
                self._store.delete_key(old.id)
        log.info(
            "ca_intermediate_rotated",
            intermediate=int_id,
            previous=previous or None,
            root=root.id,
            not_after=_iso(not_after),
        )
        return inter

    def _new_jwt_key(self, *, state: str) -> _JwtKey:
        kid = secrets.token_hex(16)
        key = ec.generate_private_key(ec.SECP256R1())
        self._store.write_key(kid, key)
        return _JwtKey(kid, key, state)

    # ----- lookups -----

    def _active_root(self) -> _Root:
        for r in self._roots:
            if r.state == "active":
                return r
        raise CaStateError("CA metadata has no active root")

    def _active_intermediate(self) -> _Intermediate:
        for i in self._intermediates:
            if i.id == self._active_intermediate_id and i.key is not None:
                return i
        raise CaStateError("CA metadata has no active intermediate with a key")

    def _active_jwt_key(self) -> _JwtKey:
        for k in self._jwt_keys:
            if k.state == "active":
                return k
        raise CaStateError("CA metadata has no active JWT key")

    # ----- signing -----

    def sign_x509_svid(
        self,
        csr: x509.CertificateSigningRequest,
        spiffe_id: SpiffeId,
        *,
        ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[IPv4Address | IPv6Address] = (),
    ) -> IssuedX509Svid:
        """Sign an X.509-SVID for `spiffe_id` over the key in `csr` (already checked by `check_csr`).

        Only the CSR's public key is used; its subject and extensions are ignored.
        """
        if not isinstance(spiffe_id, SpiffeId):
            raise TypeError("spiffe_id must be a SpiffeId")
        if not spiffe_id.is_member_of(self.trust_domain):
            raise ValueError(f"SV-01: {spiffe_id} is not in trust domain {self.trust_domain}")
        if not spiffe_id.is_workload:
            raise ValueError(f"X-04: a leaf SVID needs a path; {spiffe_id} names the trust domain itself")
        ttl = DEFAULT_X509_SVID_TTL if ttl is None else ttl
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        public_key = csr_public_key(csr)
        check_public_key(public_key)

        now = self._now()
        if now >= self._next_check:
            self.rotate_if_due()
        signer = self._active_intermediate()
        # Never outlive the signer (SPIRE caps the same way); backdate for clock skew.
        not_after = min(now + ttl, signer.cert.not_valid_after_utc)
        serial = _random_serial()
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
        sans += [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ip) for ip in ip_addresses]
        assert signer.key is not None  # _active_intermediate guarantees it
        # The signer's leaf_builder already holds the empty subject, issuer, cA=false,
        # KeyUsage and EKU.
        leaf = (
            signer.leaf_builder.public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            # the subject is empty, so the SAN extension must be critical.
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(signer.authority_key_id, critical=False)
            .sign(signer.key, _SHA256)
        )
        # The one log event per issuance is the caller's (the control plane's `svid_granted`
        # knows how the workload authenticated and is written after the audit row); the CA
        # counts what it signed.
        _X509_ISSUED.inc()
        return IssuedX509Svid(spiffe_id, [leaf, signer.cert], serial, not_after, signer.id)

    def sign_jwt_svid(
        self, spiffe_id: SpiffeId, audience: Sequence[str], *, ttl: timedelta | None = None
    ) -> str:
        """Sign an ES256 JWT-SVID for `spiffe_id` (J-03..J-09): `kid` header, `sub`, `aud`, `exp`, `iat`."""
        if not isinstance(spiffe_id, SpiffeId):
            raise TypeError("spiffe_id must be a SpiffeId")
        if not spiffe_id.is_member_of(self.trust_domain):
            raise ValueError(f"SV-01: {spiffe_id} is not in trust domain {self.trust_domain}")
        if not spiffe_id.is_workload:
            raise ValueError(f"J-06: a JWT-SVID names a workload; {spiffe_id} has no path")
        if isinstance(audience, str):
            raise TypeError("audience must be a sequence of strings, not one string")
        aud = list(audience)
        if not aud or not all(isinstance(a, str) and a for a in aud):
            raise ValueError("J-07: audience must hold at least one non-empty string")
        ttl = DEFAULT_JWT_SVID_TTL if ttl is None else ttl
        if not timedelta(0) < ttl <= MAX_JWT_SVID_TTL:
            raise ValueError(f"JWT-SVID ttl must be positive and at most {MAX_JWT_SVID_TTL}")
        now = self._now()
        if now >= self._next_check:
            self.rotate_if_due()
        key = self._active_jwt_key()
        exp = now + ttl
        claims = {
            "sub": str(spiffe_id),
            # One audience as a string, several as a list: what go-jose (SPIRE) emits.
            "aud": aud[0] if len(aud) == 1 else aud,
            "exp": int(exp.timestamp()),
            "iat": int(now.timestamp()),
        }
        token = jwt.encode(claims, key.key, algorithm="ES256", headers={"kid": key.kid, "typ": "JWT"})
        SVIDS_ISSUED.labels(type="jwt").inc()
        log.info("jwt_svid_issued", spiffe_id=str(spiffe_id), audience=aud, kid=key.kid, expires_at=_iso(exp))
        return token

    # ----- trust bundle -----

    def _bundle_members(self, now: datetime) -> _BundleMembers:
        """The roots and JWT keys `bundle()` holds at `now`, memoised until the next deadline.

        Every state change (`_save`, `_apply_metadata`, the start of a rotation) drops the
        memo, so it only saves recomputing the same answer on every request.
        """
        members = self._members
        if members is not None and members.fresh_at(now):
            return members
        roots: list[x509.Certificate] = []
        for state in ("active", "prepared", "retired"):
            for r in self._roots:
                if r.state == state and self._root_still_needed(r, now):
                    roots.append(r.cert)
        jwt_keys: dict[str, PublicKey] = {}
        for state in ("active", "prepared", "retired"):
            for k in self._jwt_keys:
                if k.state == state and self._jwt_key_still_needed(k, now):
                    jwt_keys[k.kid] = k.key.public_key()
        # Membership can next change when a certificate expires or a retired JWT key's
        # grace period ends (conservatively: any of them); recompute from then on.
        deadlines = [r.cert.not_valid_after_utc for r in self._roots]
        deadlines += [i.cert.not_valid_after_utc for i in self._intermediates]
        deadlines += [k.retired_at + MAX_JWT_SVID_TTL for k in self._jwt_keys if k.retired_at is not None]
        valid_until = min((t for t in deadlines if t > now), default=datetime.max.replace(tzinfo=UTC))
        parts = sorted(spki_fingerprint(c) + c.serial_number.to_bytes(20, "big").hex() for c in roots)
        parts += sorted("kid:" + kid for kid in jwt_keys)
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        self._members = _BundleMembers(now, valid_until, tuple(roots), jwt_keys, digest)
        return self._members

    def _root_still_needed(self, root: _Root, now: datetime) -> bool:
        if root.state != "retired":
            return True
        if root.cert.not_valid_after_utc <= now:
            return False
        # SVIDs never outlive their intermediate, so the root anchors something valid
        # exactly while one of its intermediates is unexpired.
        return any(i.root_id == root.id and i.cert.not_valid_after_utc > now for i in self._intermediates)

    @staticmethod
    def _jwt_key_still_needed(key: _JwtKey, now: datetime) -> bool:
        if key.state != "retired" or key.retired_at is None:
            return True
        return now < key.retired_at + MAX_JWT_SVID_TTL

    def _bundle_contents_digest(self, now: datetime) -> str:
        return self._bundle_members(now).digest

    def bundle(self) -> TrustBundle:
        """Every root that still anchors a valid SVID, plus the JWT keys; B-05 sequence bumps on change."""
        now = self._now()
        digest = self._bundle_contents_digest(now)
        if digest != self._bundle_digest:
            with self._store.locked():
                self._sync()
                digest = self._bundle_contents_digest(now)
                if digest != self._bundle_digest:
                    self._bundle_sequence += 1
                    self._bundle_digest = digest
                    self._save()
                    log.info("bundle_changed", trust_domain=self.trust_domain, sequence=self._bundle_sequence)
        members = self._bundle_members(now)
        return TrustBundle(
            self.trust_domain, list(members.roots), dict(members.jwt_keys), self._bundle_sequence
        )

    def fingerprint(self) -> str:
        """`sha256:<hex>` of the active (signing) root's DER SubjectPublicKeyInfo."""
        return spki_fingerprint(self._active_root().cert)

    @property
    def root_certificate(self) -> x509.Certificate:
        """The active root: what new SVIDs chain to."""
        return self._active_root().cert

    @property
    def intermediate_certificate(self) -> x509.Certificate:
        """The active intermediate: the signer of new X.509-SVIDs."""
        return self._active_intermediate().cert

    # ----- rotation -----

    def rotate_if_due(self) -> bool:
        """Do whatever rotation is due now; return True if the signer changed.

        Switches to a prepared root whose overlap has passed, renews the intermediate at
        half-life, and drops retired keys nothing depends on any more. Call it on a timer
        (the control plane does); signing also calls it when the next deadline has passed.
        """
        now = self._now()
        with self._store.locked():
            self._members = None  # whatever happens below, bundle() recomputes
            self._sync()
            rotated = False
            prepared = [r for r in self._roots if r.state == "prepared"]
            if prepared and prepared[0].activate_at is not None and prepared[0].activate_at <= now:
                self._activate_root(prepared[0], now)
                rotated = True
            else:
                current = self._active_intermediate().cert
                lifetime = current.not_valid_after_utc - current.not_valid_before_utc
                if now >= current.not_valid_before_utc + lifetime / 2:
                    self._new_active_intermediate(self._active_root(), now)
                    rotated = True
            pruned = self._prune(now)
            root = self._active_root()
            if root.cert.not_valid_after_utc - now < 2 * self.intermediate_ttl and not any(
                r.state == "prepared" for r in self._roots
            ):
                # Intermediates are capped at the root's expiry, so they are getting shorter:
                # an operator must run `trustmesh ca rotate-root` before it is too late.
                log.warning(
                    "ca_root_expiring",
                    root=root.id,
                    not_after=_iso(root.cert.not_valid_after_utc),
                    fingerprint=spki_fingerprint(root.cert),
                )
            if rotated or pruned:
                self._save()
            self._next_check = self._next_deadline()
        return rotated

    def _activate_root(self, new_root: _Root, now: datetime) -> None:
        old_root = self._active_root()
        new_root.state, new_root.activate_at = "active", None
        old_root.state, old_root.retired_at, old_root.key = "retired", now, None
        self._store.delete_key(old_root.id)
        for k in self._jwt_keys:
            if k.state == "active":
                k.state, k.retired_at = "retired", now
        for k in self._jwt_keys:
            if k.state == "prepared":
                k.state = "active"
        self._new_active_intermediate(new_root, now)
        log.info(
            "ca_root_activated",
            root=new_root.id,
            retired=old_root.id,
            fingerprint=spki_fingerprint(new_root.cert),
        )

    def _prune(self, now: datetime) -> bool:
        """Forget (and delete the files of) retired roots, intermediates and JWT keys nothing needs."""
        changed = False
        for inter in list(self._intermediates):
            if inter.id != self._active_intermediate_id and inter.cert.not_valid_after_utc <= now:
                self._intermediates.remove(inter)
                self._store.delete_cert(inter.id)
                self._store.delete_key(inter.id)
                changed = True
        for root in list(self._roots):
            if not self._root_still_needed(root, now):
                self._roots.remove(root)
                self._store.delete_cert(root.id)
                self._store.delete_key(root.id)
                log.info("ca_root_dropped", root=root.id, fingerprint=spki_fingerprint(root.cert))
                changed = True
        for key in list(self._jwt_keys):
            if not self._jwt_key_still_needed(key, now):
                self._jwt_keys.remove(key)
                self._store.delete_key(key.kid)
                changed = True
        return changed

    def _next_deadline(self) -> datetime:
        current = self._active_intermediate().cert
        half_life = (
            current.not_valid_before_utc + (current.not_valid_after_utc - current.not_valid_before_utc) / 2
        )
        deadlines = [half_life]
        deadlines += [
            r.activate_at for r in self._roots if r.state == "prepared" and r.activate_at is not None
        ]
        return min(deadlines)

    def rotate_root(
        self, overlap: timedelta = DEFAULT_ROOT_OVERLAP, *, root_ttl: timedelta | None = None
    ) -> RootRotation:
        """Prepare a new root: published in the bundle now, signing after `overlap` (see module doc)."""
        if overlap < timedelta(0):
            raise ValueError("overlap cannot be negative")
        now = self._now()
        with self._store.locked():
            self._members = None  # whatever happens below, bundle() recomputes
            self._sync()
            if any(r.state == "prepared" for r in self._roots):
                raise CaError("a root rotation is already in progress; wait until the new root is active")
            saved_ttl = self.root_ttl
            if root_ttl is not None:
                if root_ttl < self.intermediate_ttl:
                    raise ValueError("root_ttl cannot be shorter than the intermediate ttl")
                self.root_ttl = root_ttl
            try:
                root = self._new_root(now, state="prepared", activate_at=now + overlap)
            finally:
                self.root_ttl = saved_ttl
            self._roots.append(root)
            self._jwt_keys.append(self._new_jwt_key(state="prepared"))
            self._save()
            self._next_check = self._next_deadline()
        log.info(
            "ca_root_prepared",
            root=root.id,
            fingerprint=spki_fingerprint(root.cert),
            activate_at=_iso(root.activate_at),
        )
        assert root.activate_at is not None
        return RootRotation(spki_fingerprint(root.cert), root.activate_at)

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary (no key material) for `trustmesh ca status` and the GUI."""
        now = self._now()
        return {
            "trust_domain": self.trust_domain,
            "fingerprint": self.fingerprint(),
            "roots": [
                {
                    "fingerprint": spki_fingerprint(r.cert),
                    "state": r.state,
                    "not_after": _iso(r.cert.not_valid_after_utc),
                    "activate_at": _iso(r.activate_at),
                    "in_bundle": self._root_still_needed(r, now),
                }
                for r in self._roots
            ],
            "intermediate": {
                "not_after": _iso(self._active_intermediate().cert.not_valid_after_utc),
                "rotates_at": _iso(self._next_deadline()),
            },
            "bundle_sequence": self._bundle_sequence,
        }
