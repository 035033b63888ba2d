"""CSR checks: what the CA refuses to sign, and that it says why."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.ca.forge import make_csr
from trustmesh.ca import CertificateAuthority, CsrRejected, check_csr
from trustmesh.identity import SpiffeId


def _tamper_signature(pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature BIT STRING, at the end of the structure
    csr = x509.load_der_x509_csr(bytes(der))
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("pem", "match"),
    [
        (b"", "malformed"),
        (b"not a csr at all", "malformed"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "malformed"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n", "malformed"),
        (b"x" * (64 * 1024 + 1), "larger than"),
    ],
)
def test_malformed(pem: bytes, match: str) -> None:
    with pytest.raises(CsrRejected, match=match):
        check_csr(pem)


def test_truncated() -> None:
    _, pem = make_csr()
    lines = pem.splitlines()
    truncated = b"\n".join([*lines[:2], lines[-1]]) + b"\n"
    with pytest.raises(CsrRejected, match="malformed"):
        check_csr(truncated)


def test_a_certificate_is_not_a_csr(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrRejected, match="malformed"):
        check_csr(ca.root_certificate.public_bytes(serialization.Encoding.PEM))


def test_bad_signature() -> None:
    _, pem = make_csr()
    with pytest.raises(CsrRejected, match="signature does not verify"):
        check_csr(_tamper_signature(pem))


def test_signed_by_another_key() -> None:
    """A CSR carrying key A but signed with key B proves nothing about A."""
    a = ec.generate_private_key(ec.SECP256R1())
    b = ec.generate_private_key(ec.SECP256R1())
    good_a = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(a, hashes.SHA256())
    good_b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(b, hashes.SHA256())
    # Splice: A's request info with B's signature.
    da = good_a.public_bytes(serialization.Encoding.DER)
    db = good_b.public_bytes(serialization.Encoding.DER)
    tbs_a, tbs_b = good_a.tbs_certrequest_bytes, good_b.tbs_certrequest_bytes
    spliced = db.replace(tbs_b, tbs_a) if len(tbs_a) == len(tbs_b) else None
    if spliced is None:  # DER lengths differ (rare): splice the other way round
        spliced = da.replace(tbs_a, tbs_b)
    pem = x509.load_der_x509_csr(spliced).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrRejected, match="signature does not verify"):
        check_csr(pem)


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (rsa.generate_private_key(65537, 1024), "1024 bits is too weak"),
        (ec.generate_private_key(ec.SECP521R1()), "secp521r1 is not allowed"),
        (ec.generate_private_key(ec.SECP256K1()), "secp256k1 is not allowed"),
        (ec.generate_private_key(ec.SECP224R1()), "secp224r1 is not allowed"),
    ],
)
def test_weak_or_unsupported_keys(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, match: str) -> None:
    _, pem = make_csr(key)
    with pytest.raises(CsrRejected, match=match):
        check_csr(pem)


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
        rsa.generate_private_key(65537, 2048),
    ],
    ids=["p256", "p384", "ed25519", "rsa2048"],
)
def test_accepted_keys_are_signed(
    ca: CertificateAuthority, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
) -> None:
    _, pem = make_csr(key)
    svid = ca.sign_x509_svid(check_csr(pem), SpiffeId.parse("spiffe://example.org/w"))
    assert svid.leaf.public_key() == key.public_key()


def test_csr_subject_and_sans_are_ignored(ca: CertificateAuthority) -> None:
    """The SPIFFE ID comes from the caller (token / current SVID), never from the CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "admin")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://example.org/admin")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM)
    svid = ca.sign_x509_svid(check_csr(pem), SpiffeId.parse("spiffe://example.org/w"))
    san = svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/w"]
    assert svid.leaf.subject == x509.Name([])
