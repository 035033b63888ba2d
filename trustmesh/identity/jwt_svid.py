"""JWT-SVID validation: a bearer token proving a SPIFFE ID to one audience for a short time.

Order matters (J-03): the `alg` header is checked against the SPIFFE allow-list before
anything else is done with the token, so `none`, HS256 with a public key as the secret,
or EdDSA never reach a verifier. Then `typ` (J-05), `kid` (required in practice, J-04),
the signature with the bundle key named by `kid`, and the claims: `exp` an integer and in
the future (J-09, J-16, with a small leeway, J-10), `aud` present and containing our
audience (J-07), `sub` a SPIFFE ID of the bundle's trust domain (J-06, W-16).
Time comes from the caller's `now`, never the system clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from trustmesh.identity.bundle import TrustBundle
from trustmesh.identity.errors import SvidError
from trustmesh.identity.spiffe_id import InvalidSpiffeId, SpiffeId

# J-03: exactly the nine algorithms the JWT-SVID standard allows.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
ALLOWED_TYPES = frozenset({"JWT", "JOSE"})  # J-05
LEEWAY = timedelta(seconds=30)  # J-10: a little clock skew, the same margin the CA backdates X.509 by


@dataclass(frozen=True)
class JwtSvid:
    """A validated JWT-SVID."""

    spiffe_id: SpiffeId
    audience: list[str]
    expiry: datetime
    token: str = field(repr=False)
    claims: dict[str, Any] = field(repr=False, default_factory=dict)


def _claim_audience(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if aud is None or aud == "" or aud == []:
        raise SvidError("missing_claim", "J-07: token has no 'aud'")
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not all(isinstance(a, str) for a in values):
        raise SvidError("invalid_claim", "'aud' must be a string or a list of strings")
    return values


def validate_jwt_svid(token: str, bundle: TrustBundle, audience: str, now: datetime) -> JwtSvid:
    """Validate a JWT-SVID for `audience` against `bundle` at `now`; raise `SvidError` if untrusted."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not isinstance(token, str) or token.count(".") != 2:
        raise SvidError("malformed", "J-01: not a JWS compact serialization")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as err:
        raise SvidError("malformed", f"token header cannot be decoded: {err}") from err
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise SvidError("alg_not_allowed", f"J-03: algorithm {alg!r} is not allowed for JWT-SVIDs")
    typ = header.get("typ")
    if typ is not None and typ not in ALLOWED_TYPES:
        raise SvidError("bad_typ", f"J-05: typ {typ!r} is neither JWT nor JOSE")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SvidError("missing_kid", "J-04: token has no 'kid' header")
    key = bundle.jwt_authorities.get(kid)
    if key is None:
        raise SvidError("unknown_kid", f"no jwt-svid key {kid!r} in the bundle of {bundle.trust_domain}")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            options={
                "verify_signature": True,
                # Time and audience are checked below against the injected `now`.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError as err:
        raise SvidError("bad_signature", f"signature does not verify with key {kid!r}") from err
    except jwt.PyJWTError as err:
        raise SvidError("malformed", f"token cannot be verified: {err}") from err

    exp = claims.get("exp")
    if exp is None:
        raise SvidError("missing_claim", "J-09: token has no 'exp'")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise SvidError("invalid_claim", "J-16: 'exp' must be an integer")
    expiry = datetime.fromtimestamp(exp, UTC)
    if now >= expiry + LEEWAY:
        raise SvidError("expired", f"token expired at {expiry.isoformat()}")
    nbf = claims.get("nbf")
    if isinstance(nbf, int) and now + LEEWAY < datetime.fromtimestamp(nbf, UTC):
        raise SvidError("not_yet_valid", "token 'nbf' is in the future")
    audiences = _claim_audience(claims)
    if audience not in audiences:
        raise SvidError("wrong_audience", f"J-07: audience {audience!r} is not in the token's 'aud'")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise SvidError("missing_claim", "J-06: token has no 'sub'")
    try:
        spiffe_id = SpiffeId.parse(sub)
    except InvalidSpiffeId as err:
        raise SvidError("invalid_spiffe_id", f"'sub' is not a SPIFFE ID: {err}") from err
    if not spiffe_id.is_member_of(bundle.trust_domain):
        raise SvidError(
            "foreign_trust_domain", f"W-16: {spiffe_id} is not in trust domain {bundle.trust_domain}"
        )
    return JwtSvid(spiffe_id, audiences, expiry, token, claims)
