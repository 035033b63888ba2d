"""X.509-SVID validation: is this certificate chain a trustworthy SPIFFE identity right now?

Two layers, both required (X-19, X-20, and SPIFFE.md §8.3):

1. The SPIFFE leaf rules, checked explicitly because general TLS libraries accept
   certificates that SPIFFE forbids: exactly one URI SAN, a valid SPIFFE ID with a
   path, cA=false, KeyUsage with digitalSignature and neither keyCertSign nor cRLSign;
   every signing certificate in the chain a CA with keyCertSign; the ID in the bundle's
   trust domain (B-02: a bundle only vouches for its own trust domain).
2. RFC 5280 path validation from the leaf through the given intermediates to one of the
   bundle's roots, done by `cryptography`'s verifier (signatures, validity at `now`,
   basic constraints, path length, name chaining). Its end-entity extension policy is
   relaxed to "permit all" because layer 1 already says what a SPIFFE leaf must carry,
   and the web-PKI defaults (e.g. requiring EKU) are not SPIFFE's rules.

Validity is checked against the caller's `now` (an injected clock), never the system time.
Each failure raises `SvidError` with its own `reason`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from trustmesh.identity.bundle import TrustBundle
from trustmesh.identity.errors import SvidError
from trustmesh.identity.spiffe_id import InvalidSpiffeId, SpiffeId

# A leaf, one intermediate, a root, with room for one more level of signing CA.
MAX_CHAIN_DEPTH = 4


def leaf_spiffe_id(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID in a certificate's single URI SAN (X-01, X-02), or `SvidError`."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise SvidError(
            "uri_san_count", "certificate has no SubjectAlternativeName, so no SPIFFE ID"
        ) from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise SvidError(
            "uri_san_count", f"X-02: certificate has {len(uris)} URI SANs, exactly one is required"
        )
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId as err:
        raise SvidError("invalid_spiffe_id", f"URI SAN {uris[0]!r} is not a SPIFFE ID: {err}") from err


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _check_leaf(leaf: x509.Certificate) -> SpiffeId:
    spiffe_id = leaf_spiffe_id(leaf)
    bc = _basic_constraints(leaf)
    if bc is not None and bc.ca:
        raise SvidError("leaf_is_ca", "X-10/X-20: leaf has cA=true; signing certificates never authenticate")
    ku = _key_usage(leaf)
    if ku is None:
        raise SvidError("leaf_key_usage", "X-13: leaf has no KeyUsage extension")
    if ku.key_cert_sign or ku.crl_sign:
        raise SvidError("leaf_key_usage", "X-16/X-20: leaf has keyCertSign or cRLSign")
    if not ku.digital_signature:
        raise SvidError("leaf_key_usage", "X-15: leaf lacks digitalSignature")
    if not spiffe_id.is_workload:
        raise SvidError("leaf_no_path", f"X-04/X-20: leaf SPIFFE ID {spiffe_id} has no path")
    return spiffe_id


def _check_signers(signers: Sequence[x509.Certificate]) -> None:
    for index, cert in enumerate(signers, start=1):
        bc = _basic_constraints(cert)
        ku = _key_usage(cert)
        if bc is None or not bc.ca:
            raise SvidError(
                "signer_not_ca", f"X-11: chain[{index}] signs certificates but is not a CA (cA=false)"
            )
        if ku is None or not ku.key_cert_sign:
            raise SvidError("signer_not_ca", f"X-14: chain[{index}] signs certificates but lacks keyCertSign")


def _check_validity(chain: Sequence[x509.Certificate], now: datetime) -> None:
    for index, cert in enumerate(chain):
        what = "leaf" if index == 0 else f"chain[{index}]"
        if now < cert.not_valid_before_utc:
            raise SvidError(
                "not_yet_valid", f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}"
            )
        if now > cert.not_valid_after_utc:
            raise SvidError("expired", f"{what} expired at {cert.not_valid_after_utc.isoformat()}")


def validate_x509_svid(chain: Sequence[x509.Certificate], bundle: TrustBundle, now: datetime) -> SpiffeId:
    """Validate an X.509-SVID chain (leaf first) against `bundle` at time `now`; return its SPIFFE ID."""
    if not chain:
        raise SvidError("empty_chain", "no certificates presented")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    leaf, signers = chain[0], list(chain[1:])
    spiffe_id = _check_leaf(leaf)
    if not spiffe_id.is_member_of(bundle.trust_domain):
        raise SvidError(
            "foreign_trust_domain",
            f"B-02: {spiffe_id} is not in trust domain {bundle.trust_domain}, whose bundle was used",
        )
    _check_signers(signers)
    _check_validity(chain, now)
    if not bundle.x509_authorities:
        raise SvidError(
            "untrusted_chain", f"B-07: the bundle of {bundle.trust_domain} has no X.509 authorities"
        )
    verifier = (
        PolicyBuilder()
        .store(Store(list(bundle.x509_authorities)))
        .time(now)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, signers)
    except VerificationError as err:
        raise SvidError(
            "untrusted_chain", f"X-19: no valid path to a root of {bundle.trust_domain}: {err}"
        ) from err
    return spiffe_id
