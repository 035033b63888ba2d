"""The SPIFFE bundle format: what trustmesh writes, and how forgiving or strict it is when reading."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from trustmesh.ca import CertificateAuthority
from trustmesh.identity import BundleError, TrustBundle

TD = "example.org"


def _doc(ca: CertificateAuthority) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ca.bundle().to_spiffe_json())
    return doc


def _parse(doc: object) -> TrustBundle:
    return TrustBundle.from_spiffe_json(TD, json.dumps(doc))


def test_x509_entries_have_no_kid_and_one_x5c(ca: CertificateAuthority) -> None:
    """X-21, X-22: one DER certificate per entry, no kid; J-13: jwt entries have a kid."""
    for entry in _doc(ca)["keys"]:
        assert entry["kty"] == "EC" and entry["crv"] == "P-256"
        if entry["use"] == "x509-svid":
            assert "kid" not in entry
            der = base64.b64decode(entry["x5c"][0])
            assert der == ca.root_certificate.public_bytes(serialization.Encoding.DER)
        else:
            assert entry["use"] == "jwt-svid" and entry["kid"]
        assert "d" not in entry  # never a private key


def test_missing_keys_rejected(ca: CertificateAuthority) -> None:
    """B-07 (and §7: stricter than py-spiffe's JwtBundle.parse)."""
    doc = _doc(ca)
    del doc["keys"]
    with pytest.raises(BundleError, match="B-07"):
        _parse(doc)


def test_empty_keys_is_an_empty_bundle() -> None:
    bundle = _parse({"keys": [], "spiffe_sequence": 7})
    assert bundle.x509_authorities == [] and bundle.jwt_authorities == {} and bundle.sequence == 7


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.update(use="x509-svid-v2"),  # B-08 unknown use
        lambda e: e.pop("use"),  # B-08 no use
        lambda e: e.update(use="X509-SVID"),  # B-09 use is case-sensitive
    ],
    ids=["unknown-use", "no-use", "wrong-case-use"],
)
def test_entries_with_unknown_use_are_ignored_alone(ca: CertificateAuthority, mutate: Any) -> None:
    doc = _doc(ca)
    x509_entry = next(e for e in doc["keys"] if e["use"] == "x509-svid")
    mutate(x509_entry)
    bundle = _parse(doc)
    assert bundle.x509_authorities == []
    assert len(bundle.jwt_authorities) == 1  # the rest of the bundle still counts


def test_jwt_entry_with_unknown_kty_is_ignored(ca: CertificateAuthority) -> None:
    """B-08 (§7: py-spiffe rejects the whole JWKS here; we skip the entry)."""
    doc = _doc(ca)
    doc["keys"].append({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "use": "jwt-svid", "kid": "ed"})
    bundle = _parse(doc)
    assert "ed" not in bundle.jwt_authorities and len(bundle.jwt_authorities) == 1


def test_x509_entry_without_x5c_is_ignored(ca: CertificateAuthority) -> None:
    """X-23."""
    doc = _doc(ca)
    entry = next(e for e in doc["keys"] if e["use"] == "x509-svid")
    entry["x5c"] = []
    doc["keys"].append({k: v for k, v in entry.items() if k != "x5c"})
    assert _parse(doc).x509_authorities == []


def test_x5c_with_several_certificates_uses_the_first(ca: CertificateAuthority) -> None:
    """X-23 (§7: go-spiffe rejects this; the standard says use the first)."""
    doc = _doc(ca)
    entry = next(e for e in doc["keys"] if e["use"] == "x509-svid")
    inter = base64.b64encode(ca.intermediate_certificate.public_bytes(serialization.Encoding.DER)).decode()
    entry["x5c"].append(inter)
    assert _parse(doc).x509_authorities == [ca.root_certificate]


def test_jwt_entry_without_kid_rejected(ca: CertificateAuthority) -> None:
    doc = _doc(ca)
    next(e for e in doc["keys"] if e["use"] == "jwt-svid").pop("kid")
    with pytest.raises(BundleError, match="J-13"):
        _parse(doc)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"keys": {}}',
        '{"keys": [1]}',
        '{"keys": [], "spiffe_sequence": true}',
        '{"keys": [], "spiffe_sequence": "1"}',
        '{"keys": [], "spiffe_refresh_hint": -5}',
        '{"keys": [{"use": "x509-svid", "x5c": ["!!notbase64"]}]}',
        '{"keys": [{"use": "x509-svid", "x5c": ["AAAA"]}]}',
        '{"keys": [{"use": "jwt-svid", "kid": "k", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}',
    ],
)
def test_malformed_documents(text: str) -> None:
    with pytest.raises(BundleError):
        TrustBundle.from_spiffe_json(TD, text)


def test_private_jwk_rejected(ca: CertificateAuthority) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    jwk.update(use="jwt-svid", kid="leaked")
    with pytest.raises(BundleError, match="private key"):
        _parse({"keys": [jwk]})


def test_refresh_hint_and_sequence_round_trip(ca: CertificateAuthority) -> None:
    bundle = ca.bundle()
    bundle.refresh_hint = 60
    again = TrustBundle.from_spiffe_json(TD, bundle.to_spiffe_json())
    assert (again.refresh_hint, again.sequence) == (60, bundle.sequence)


def test_pem_round_trip(ca: CertificateAuthority) -> None:
    bundle = TrustBundle.from_pem(TD, ca.bundle().to_pem())
    assert bundle.x509_authorities == [ca.root_certificate]
    with pytest.raises(BundleError):
        TrustBundle.from_pem(TD, b"garbage")


def test_jwks_json_has_only_jwt_keys(ca: CertificateAuthority) -> None:
    keys = json.loads(ca.bundle().jwks_json())["keys"]
    assert [k["use"] for k in keys] == ["jwt-svid"]


def test_bundle_needs_a_valid_trust_domain() -> None:
    with pytest.raises(ValueError, match="ID-07"):
        TrustBundle("Example.org")
