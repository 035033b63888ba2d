"""Forge certificates for negative tests: things the trustmesh CA would never issue.

Other test suites may import this (`from tests.ca.forge import ...`; the repository root
must be on sys.path, which tests/ca/conftest.py and tests/identity/conftest.py ensure).
Forged leaves are signed with the CA's real intermediate key, read from the state dir,
so a validator that rejects them does so for the rule under test, not for a bad signature.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from trustmesh.ca import CertificateAuthority

CsrKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def make_csr(key: CsrKey | None = None) -> tuple[CsrKey, bytes]:
    """A workload key and a PEM CSR signed by it (subject empty, as trustmesh workloads send)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, algorithm)
    return key, csr.public_bytes(serialization.Encoding.PEM)


def key_pem(key: CsrKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def intermediate_of(state_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA's active intermediate certificate and private key, read straight from its files."""
    ca_dir = Path(state_dir) / "ca"
    meta = json.loads((ca_dir / "ca.json").read_text())
    int_id = meta["active_intermediate"]
    cert = x509.load_pem_x509_certificate((ca_dir / "certs" / f"{int_id}.crt.pem").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "keys" / f"{int_id}.key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def forge_leaf(
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    uris: Sequence[str] = ("spiffe://example.org/forged",),
    not_before: datetime,
    not_after: datetime,
    ca: bool = False,
    digital_signature: bool = True,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
    key_usage: bool = True,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[list[x509.Certificate], ec.EllipticCurvePrivateKey]:
    """A leaf with exactly the given flaws, signed by `issuer`; returns (chain, leaf key)."""
    issuer_cert, issuer_key = issuer
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=True
        )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=crl_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    return [builder.sign(issuer_key, hashes.SHA256()), issuer_cert], key


def forge_with_ca(
    authority: CertificateAuthority, state_dir: Path, now: datetime, /, **kwargs: object
) -> list[x509.Certificate]:
    """Forge a leaf under the CA's active intermediate, valid from now-1m to now+1h unless overridden.

    `authority` is the CA whose files are in `state_dir` (its intermediate must be current).
    """
    assert authority.intermediate_certificate == intermediate_of(state_dir)[0]
    kwargs.setdefault("not_before", now - timedelta(minutes=1))
    kwargs.setdefault("not_after", now + timedelta(hours=1))
    chain, _ = forge_leaf(intermediate_of(state_dir), **kwargs)  # type: ignore[arg-type]
    return chain
