"""Trust bundles: what a trust domain's validators need to check its SVIDs.

A bundle holds the X.509 roots (for X.509-SVIDs) and the JWT signing keys (for JWT-SVIDs)
of one trust domain, and travels as the SPIFFE bundle format: a JWK Set (RFC 7517) whose
entries say `use: "x509-svid"` (one certificate in `x5c`, no `kid`; X-21, X-22) or
`use: "jwt-svid"` (with a `kid`; J-13), plus `spiffe_sequence` (B-05) and
`spiffe_refresh_hint` (B-06) at the top level.

Reading follows the standard's forgiving rules where it has them, and is strict where it
asks to be: a missing `keys` member is an error (B-07); an entry with an unknown `use`
or `kty`, or none, is skipped on its own (B-08); an x509-svid entry with no or an empty
`x5c` is skipped, and only the first certificate of `x5c` counts (X-23).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from trustmesh.identity.spiffe_id import validate_trust_domain

USE_X509 = "x509-svid"
USE_JWT = "jwt-svid"

# B-06: consumers with no hint should refresh often; five minutes is the standard's example,
# and trustmesh publishes the same figure so workloads see a root rotation well inside the
# root-rotation overlap.
DEFAULT_REFRESH_HINT_SECONDS = 300

# The key types a SPIFFE authority may use: the JWT-SVID algorithms are RS*/PS* and ES*
# only (J-03), so only RSA and EC keys are published or read.
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class BundleError(ValueError):
    """A SPIFFE bundle document that cannot be used (malformed, or missing what B-07/J-13 require)."""


@dataclass
class TrustBundle:
    """The X.509 roots and JWT keys of one trust domain (B-02: a bundle is always named)."""

    trust_domain: str
    x509_authorities: list[x509.Certificate] = field(default_factory=list)
    jwt_authorities: dict[str, PublicKey] = field(default_factory=dict)
    sequence: int = 0
    refresh_hint: int | None = DEFAULT_REFRESH_HINT_SECONDS

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)

    # ----- encoding -----

    def to_spiffe_dict(self) -> dict[str, Any]:
        """The SPIFFE bundle as a JSON-ready dict."""
        keys: list[dict[str, Any]] = []
        for cert in self.x509_authorities:
            jwk = _public_jwk(_authority_key(cert))
            jwk["use"] = USE_X509
            jwk["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")]
            keys.append(jwk)
        for kid, key in self.jwt_authorities.items():
            jwk = _public_jwk(key)
            jwk["use"] = USE_JWT
            jwk["kid"] = kid
            keys.append(jwk)
        doc: dict[str, Any] = {"keys": keys, "spiffe_sequence": self.sequence}
        if self.refresh_hint is not None:
            doc["spiffe_refresh_hint"] = self.refresh_hint
        return doc

    def to_spiffe_json(self) -> str:
        """The SPIFFE bundle document (a JWKS), as served at `/v1/bundle`."""
        return json.dumps(self.to_spiffe_dict(), indent=2)

    def jwks_json(self) -> str:
        """Only the jwt-svid keys as a plain JWKS (what a JWT library or W-14 wants)."""
        doc = self.to_spiffe_dict()
        return json.dumps({"keys": [k for k in doc["keys"] if k["use"] == USE_JWT]})

    def to_pem(self) -> bytes:
        """The X.509 roots as concatenated PEM, as served at `/v1/bundle.pem`."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.x509_authorities)

    # ----- decoding -----

    @classmethod
    def from_pem(cls, trust_domain: str, pem: bytes) -> TrustBundle:
        """A bundle of X.509 roots only, from concatenated PEM (the `/v1/join` response's `bundle`)."""
        try:
            roots = x509.load_pem_x509_certificates(pem)
        except ValueError as err:
            raise BundleError(f"bundle PEM is not a list of certificates: {err}") from err
        return cls(trust_domain, roots, {}, 0, None)

    @classmethod
    def from_spiffe_json(cls, trust_domain: str, text: str | bytes) -> TrustBundle:
        """Parse a SPIFFE bundle document for `trust_domain`; raise `BundleError` if unusable."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BundleError(f"bundle is not JSON: {err}") from err
        if not isinstance(doc, dict):
            raise BundleError("bundle must be a JSON object")
        if "keys" not in doc:
            raise BundleError("B-07: bundle has no 'keys' member")
        raw_keys = doc["keys"]
        if not isinstance(raw_keys, list):
            raise BundleError("B-07: 'keys' must be an array")
        sequence = _optional_int(doc, "spiffe_sequence", "B-05")
        refresh_hint = _optional_int(doc, "spiffe_refresh_hint", "B-06")

        roots: list[x509.Certificate] = []
        jwt_keys: dict[str, PublicKey] = {}
        for index, entry in enumerate(raw_keys):
            if not isinstance(entry, dict):
                raise BundleError(f"keys[{index}] is not a JSON object")
            use = entry.get("use")
            if use == USE_X509:
                cert = _x509_entry(entry, index)
                if cert is not None:
                    roots.append(cert)
            elif use == USE_JWT:
                kid = entry.get("kid")
                if not isinstance(kid, str) or kid == "":
                    raise BundleError(f"J-13: jwt-svid entry keys[{index}] has no 'kid'")
                key = _jwk_public_key(entry, index)
                if key is None:
                    continue  # B-08: unknown kty, ignore this entry only
                if kid in jwt_keys:
                    raise BundleError(f"jwt-svid kid {kid!r} appears twice")
                jwt_keys[kid] = key
            # else B-08: unknown or missing `use`: ignore the entry, not the bundle.
        return cls(trust_domain, roots, jwt_keys, sequence or 0, refresh_hint)


def _optional_int(doc: dict[str, Any], name: str, rule: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    # bool is an int subclass in Python; JSON `true` is not a sequence number.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BundleError(f"{rule}: '{name}' must be a non-negative integer")
    return value


def _x509_entry(entry: dict[str, Any], index: int) -> x509.Certificate | None:
    x5c = entry.get("x5c")
    if not isinstance(x5c, list) or not x5c:
        return None  # no or empty x5c: ignore the entry
    first = x5c[0]
    if not isinstance(first, str):
        raise BundleError(f"keys[{index}].x5c[0] is not a base64 string")
    try:
        return x509.load_der_x509_certificate(base64.b64decode(first, validate=True))
    except ValueError as err:  # binascii.Error is a ValueError too
        raise BundleError(f"keys[{index}].x5c[0] is not a DER certificate: {err}") from err


def _jwk_public_key(entry: dict[str, Any], index: int) -> PublicKey | None:
    kty = entry.get("kty")
    text = json.dumps(entry)
    try:
        key: object
        if kty == "EC":
            key = ECAlgorithm.from_jwk(text)
        elif kty == "RSA":
            key = RSAAlgorithm.from_jwk(text)
        else:
            return None
    except InvalidKeyError as err:
        raise BundleError(f"keys[{index}] is not a valid {kty} key: {err}") from err
    if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return key
    # A JWK carrying a private key ("d") is never acceptable in a bundle.
    raise BundleError(f"keys[{index}] holds a private key; bundles carry public keys only")


def _authority_key(cert: x509.Certificate) -> PublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise BundleError(f"unsupported root key type {type(key).__name__}")
    return key


def _public_jwk(key: PublicKey) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    # B-10: no JWK parameters beyond those the standards define.
    return {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}
