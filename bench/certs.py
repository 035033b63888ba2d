"""Certificates for the benchmark: one ECDSA P-256 PKI shared by every TLS leg.

The comparison is only fair if stunnel and trustmesh handshake with the same kind
of certificates: P-256 leaves with one SPIFFE URI SAN, a chain of leaf plus
intermediate, and a root as the trust anchor. So the stunnel pair and the
handshake client get their SVIDs from the very CA the trustmesh control plane
runs on (`trustmesh ca init`, then `CertificateAuthority.sign_x509_svid`). While
that CA is not in the tree yet, an equivalent root/intermediate/leaf chain is made
with the `cryptography` package, and the report says which one was used.
"""

from __future__ import annotations

import datetime as dt
import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "example.org"
# Lifetime of the benchmark's own leaves: the run takes minutes, an hour is plenty.
LEAF_TTL = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Leaf:
    """Files of one issued SVID: chain (leaf first, then intermediate) and key, both PEM."""

    spiffe_id: str
    chain: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """The trust anchor file plus the leaves the harness needs; `source` names who issued them."""

    source: str
    roots: Path
    state_dir: Path | None  # the trustmesh CA state dir, when the trustmesh CA issued these
    leaves: dict[str, Leaf]


def trustmesh_command() -> list[str]:
    """The `trustmesh` command of the interpreter running the harness (the venv's)."""
    return [sys.executable, "-m", "trustmesh.cli.main"]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_leaf(
    out: Path, name: str, spiffe_id: str, chain_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> Leaf:
    chain = out / f"{name}.chain.pem"
    key_path = out / f"{name}.key.pem"
    chain.write_bytes(chain_pem)
    key_path.write_bytes(_key_pem(key))
    key_path.chmod(0o600)
    return Leaf(spiffe_id, chain, key_path)


def _ca_class() -> Any | None:
    """The trustmesh `CertificateAuthority` class, or None while this checkout lacks it."""
    try:
        import trustmesh.ca as ca_pkg
    except ImportError:
        return None
    found = getattr(ca_pkg, "CertificateAuthority", None)
    if found is None:
        for module in ("authority", "ca", "signer"):
            try:
                mod = importlib.import_module(f"trustmesh.ca.{module}")
            except ImportError:
                continue
            found = getattr(mod, "CertificateAuthority", None)
            if found is not None:
                break
    return found


def trustmesh_ca_available() -> bool:
    """True when this checkout has the CA's in-process API (issue 2 contract in docs/architecture.md)."""
    return _ca_class() is not None


def make_pki(out: Path, names: dict[str, str]) -> Pki:
    """Issue one leaf per `names` entry (file stem -> SPIFFE ID) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    if trustmesh_ca_available():
        return _trustmesh_pki(out, names)
    return _cryptography_pki(out, names)


def _trustmesh_pki(out: Path, names: dict[str, str]) -> Pki:
    from trustmesh.clock import SystemClock

    state = out / "ca-state"
    subprocess.run(
        [*trustmesh_command(), "ca", "init", "--trust-domain", TRUST_DOMAIN,
         "--state-dir", str(state)],
        check=True, capture_output=True,
    )
    ca_class = _ca_class()
    assert ca_class is not None
    _quiet_trustmesh_logs()
    return _issue(ca_class.load(state, clock=SystemClock()), state, out, names)


def _quiet_trustmesh_logs() -> None:
    """The CA logs an event per issuance; the harness's stdout is the report, so warnings only, on stderr."""
    try:
        from trustmesh.tracing.logs import configure_logging
    except ImportError:
        return
    configure_logging("warning", "console", stream=sys.stderr)


def _issue(ca: Any, state: Path, out: Path, names: dict[str, str]) -> Pki:
    from trustmesh.identity.spiffe_id import SpiffeId

    roots = out / "roots.pem"
    roots.write_bytes(ca.bundle().to_pem())
    leaves = {}
    for name, sid in names.items():
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        issued = ca.sign_x509_svid(csr, SpiffeId.parse(sid), ttl=LEAF_TTL)
        leaves[name] = _write_leaf(out, name, sid, issued.chain_pem(), key)
    source = "trustmesh CA (`trustmesh ca init`, `CertificateAuthority.sign_x509_svid`)"
    return Pki(source, roots, state, leaves)


def _ca_cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey, now: dt.datetime,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def _cryptography_pki(out: Path, names: dict[str, str]) -> Pki:
    """A stand-in with the SVID profile of issue 2, for when the trustmesh CA is missing."""
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("bench root", root_key, None, root_key, now)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = _ca_cert("bench intermediate", inter_key, root.subject, root_key, now)
    roots = out / "roots.pem"
    roots.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    leaves = {}
    for name, sid in names.items():
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(inter.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + LEAF_TTL)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(sid)]), critical=True
            )
            .sign(inter_key, hashes.SHA256())
        )
        chain_pem = leaf.public_bytes(serialization.Encoding.PEM) + inter.public_bytes(
            serialization.Encoding.PEM
        )
        leaves[name] = _write_leaf(out, name, sid, chain_pem, key)
    return Pki("`cryptography` stand-in (trustmesh CA not in this checkout yet)", roots, None, leaves)
