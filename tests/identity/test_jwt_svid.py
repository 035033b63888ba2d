"""JWT-SVIDs: issued by the CA, validated by trustmesh.identity, with each failure named."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustmesh.ca import CertificateAuthority
from trustmesh.clock import ManualClock
from trustmesh.identity import SpiffeId, SvidError, TrustBundle, validate_jwt_svid

WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/default/sa/api")


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _jwt_key(state_dir: Path, kid: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(
        (state_dir / "ca" / "keys" / f"{kid}.key.pem").read_bytes(), None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _reason(token: str, bundle: TrustBundle, audience: str, clock: ManualClock) -> str:
    with pytest.raises(SvidError) as info:
        validate_jwt_svid(token, bundle, audience, clock.now())
    return info.value.reason


def test_issue_and_validate(ca: CertificateAuthority, clock: ManualClock) -> None:
    token = ca.sign_jwt_svid(WORKLOAD, ["spiffe://example.org/reports"])
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": header["kid"]}  # J-02: nothing else
    assert header["kid"] in ca.bundle().jwt_authorities
    svid = validate_jwt_svid(token, ca.bundle(), "spiffe://example.org/reports", clock.now())
    assert svid.spiffe_id == WORKLOAD
    assert svid.audience == ["spiffe://example.org/reports"]
    assert svid.expiry == clock.now() + timedelta(minutes=5)
    assert svid.claims["iat"] == int(clock.now().timestamp())


def test_several_audiences(ca: CertificateAuthority, clock: ManualClock) -> None:
    token = ca.sign_jwt_svid(WORKLOAD, ["a", "b"], ttl=timedelta(minutes=1))
    assert validate_jwt_svid(token, ca.bundle(), "b", clock.now()).audience == ["a", "b"]


def test_wrong_audience(ca: CertificateAuthority, clock: ManualClock) -> None:
    token = ca.sign_jwt_svid(WORKLOAD, ["reports"])
    assert _reason(token, ca.bundle(), "billing", clock) == "wrong_audience"


def test_expired(ca: CertificateAuthority, clock: ManualClock) -> None:
    token = ca.sign_jwt_svid(WORKLOAD, ["reports"])
    clock.advance(timedelta(minutes=5, seconds=31))  # past exp plus the 30 s leeway
    assert _reason(token, ca.bundle(), "reports", clock) == "expired"


def test_alg_none_is_refused_first(ca: CertificateAuthority, clock: ManualClock) -> None:
    """J-03: `none` is rejected before anything else, even with a valid kid."""
    kid = next(iter(ca.bundle().jwt_authorities))
    token = _b64({"alg": "none", "kid": kid}) + "." + _b64({"sub": str(WORKLOAD), "aud": "reports"}) + "."
    assert _reason(token, ca.bundle(), "reports", clock) == "alg_not_allowed"


def test_hs256_with_public_key_as_secret(ca: CertificateAuthority, clock: ManualClock) -> None:
    """The classic key-confusion attack: HMAC keyed with the published public key."""
    bundle = ca.bundle()
    kid, key = next(iter(bundle.jwt_authorities.items()))
    secret = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = _b64({"alg": "HS256", "kid": kid, "typ": "JWT"})
    payload = _b64({"sub": str(WORKLOAD), "aud": "reports", "exp": int(clock.now().timestamp()) + 60})
    import hashlib
    import hmac

    sig = hmac.new(secret, f"{token}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{token}.{payload}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    assert _reason(forged, bundle, "reports", clock) == "alg_not_allowed"


def _sign(state_dir: Path, ca: CertificateAuthority, claims: dict[str, object], **headers: object) -> str:
    kid = next(iter(ca.bundle().jwt_authorities))
    all_headers: dict[str, object] = {"kid": kid}
    all_headers.update(headers)
    return jwt.encode(claims, _jwt_key(state_dir, kid), algorithm="ES256", headers=all_headers)


def test_missing_kid(ca: CertificateAuthority, clock: ManualClock, state_dir: Path) -> None:
    kid = next(iter(ca.bundle().jwt_authorities))
    exp = int(clock.now().timestamp()) + 60
    token = jwt.encode(
        {"sub": str(WORKLOAD), "aud": "r", "exp": exp}, _jwt_key(state_dir, kid), algorithm="ES256"
    )
    assert _reason(token, ca.bundle(), "r", clock) == "missing_kid"


def test_unknown_kid(ca: CertificateAuthority, clock: ManualClock) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    exp = int(clock.now().timestamp()) + 60
    token = jwt.encode(
        {"sub": str(WORKLOAD), "aud": "r", "exp": exp}, other, algorithm="ES256", headers={"kid": "x"}
    )
    assert _reason(token, ca.bundle(), "r", clock) == "unknown_kid"


def test_signed_by_another_key_under_our_kid(ca: CertificateAuthority, clock: ManualClock) -> None:
    kid = next(iter(ca.bundle().jwt_authorities))
    other = ec.generate_private_key(ec.SECP256R1())
    exp = int(clock.now().timestamp()) + 60
    token = jwt.encode(
        {"sub": str(WORKLOAD), "aud": "r", "exp": exp}, other, algorithm="ES256", headers={"kid": kid}
    )
    assert _reason(token, ca.bundle(), "r", clock) == "bad_signature"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": str(WORKLOAD), "aud": "r"}, "missing_claim"),  # J-09 no exp
        ({"sub": str(WORKLOAD), "aud": "r", "exp": "soon"}, "invalid_claim"),  # J-16
        ({"sub": str(WORKLOAD), "exp": None}, "missing_claim"),  # J-07 no aud
        ({"sub": str(WORKLOAD), "aud": [], "exp": None}, "missing_claim"),  # J-07 empty aud
        ({"aud": "r", "exp": None}, "missing_claim"),  # J-06 no sub
        ({"sub": "spiffe://example.org/a/", "aud": "r", "exp": None}, "invalid_spiffe_id"),
        ({"sub": "spiffe://other.org/a", "aud": "r", "exp": None}, "foreign_trust_domain"),
    ],
)
def test_claims(
    ca: CertificateAuthority, clock: ManualClock, state_dir: Path, claims: dict[str, object], reason: str
) -> None:
    if claims.get("exp", 0) is None:
        claims["exp"] = int(clock.now().timestamp()) + 60
    assert _reason(_sign(state_dir, ca, claims), ca.bundle(), "r", clock) == reason


def test_bad_typ(ca: CertificateAuthority, clock: ManualClock, state_dir: Path) -> None:
    exp = int(clock.now().timestamp()) + 60
    token = _sign(state_dir, ca, {"sub": str(WORKLOAD), "aud": "r", "exp": exp}, typ="at+jwt")
    assert _reason(token, ca.bundle(), "r", clock) == "bad_typ"


def test_malformed(ca: CertificateAuthority, clock: ManualClock) -> None:
    assert _reason("not-a-jwt", ca.bundle(), "r", clock) == "malformed"
    assert _reason("a.b.c", ca.bundle(), "r", clock) == "malformed"


@pytest.mark.parametrize(
    ("audience", "ttl"),
    [([], None), ([""], None), (["a"], timedelta(0)), (["a"], timedelta(hours=2))],
)
def test_ca_refuses_bad_requests(
    ca: CertificateAuthority, audience: list[str], ttl: timedelta | None
) -> None:
    with pytest.raises(ValueError):
        ca.sign_jwt_svid(WORKLOAD, audience, ttl=ttl)


def test_ca_refuses_a_single_string_audience(ca: CertificateAuthority) -> None:
    with pytest.raises(TypeError):
        ca.sign_jwt_svid(WORKLOAD, "reports")
