"""The CA as an operator and a workload see it: files on disk, certificate profiles, SVIDs."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.ca.forge import make_csr
from trustmesh.ca import (
    CaAlreadyInitialised,
    CaStateError,
    CertificateAuthority,
    check_csr,
)
from trustmesh.clock import ManualClock
from trustmesh.identity import SpiffeId, TrustBundle, validate_x509_svid

WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/default/sa/api")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


# ----- init, load, files -----


def test_init_writes_keys_0600_in_dirs_0700(ca: CertificateAuthority, state_dir: Path) -> None:
    assert _mode(state_dir) == 0o700
    dirs = [p for p in state_dir.rglob("*") if p.is_dir()]
    assert {d.name for d in dirs} == {"ca", "keys", "certs"}
    assert all(_mode(d) == 0o700 for d in dirs)
    keys = list((state_dir / "ca" / "keys").iterdir())
    assert len(keys) == 3  # root, intermediate, JWT signing key
    for key in keys:
        assert _mode(key) == 0o600
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert _mode(state_dir / "ca" / "ca.json") == 0o600


def test_init_with_permissive_umask_still_0600(tmp_path: Path, clock: ManualClock) -> None:
    import os

    old = os.umask(0)
    try:
        CertificateAuthority.init(tmp_path / "s", "example.org", clock=clock)
    finally:
        os.umask(old)
    assert all(_mode(k) == 0o600 for k in (tmp_path / "s" / "ca" / "keys").iterdir())


def test_second_init_refuses_and_changes_nothing(ca: CertificateAuthority, state_dir: Path) -> None:
    before = {p: p.read_bytes() for p in state_dir.rglob("*") if p.is_file()}
    with pytest.raises(CaAlreadyInitialised, match="already holds a CA"):
        CertificateAuthority.init(state_dir, "example.org")
    assert {p: p.read_bytes() for p in state_dir.rglob("*") if p.is_file()} == before


def test_init_rejects_bad_trust_domain(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ID-07"):
        CertificateAuthority.init(tmp_path / "s", "Example.org")
    assert not (tmp_path / "s").exists()


def test_load_restores_the_same_ca(ca: CertificateAuthority, state_dir: Path, clock: ManualClock) -> None:
    loaded = CertificateAuthority.load(state_dir, clock=clock)
    assert loaded.fingerprint() == ca.fingerprint()
    assert loaded.trust_domain == "example.org"
    _, pem = make_csr()
    svid = loaded.sign_x509_svid(check_csr(pem), WORKLOAD)
    assert validate_x509_svid(svid.chain, ca.bundle(), clock.now()) == WORKLOAD


def test_load_without_ca_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CaStateError, match="ca init"):
        CertificateAuthority.load(tmp_path)


def test_fingerprint_matches_openssl(ca: CertificateAuthority, state_dir: Path) -> None:
    """Independent check of the kubeadm-style hash: openssl extracts the SPKI, sha256 hashes it."""
    root_pem = ca.root_certificate.public_bytes(serialization.Encoding.PEM)
    pub = subprocess.run(
        ["openssl", "x509", "-noout", "-pubkey"], input=root_pem, capture_output=True, check=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, capture_output=True, check=True
    ).stdout
    assert ca.fingerprint() == "sha256:" + hashlib.sha256(der).hexdigest()
    assert len(ca.fingerprint()) == len("sha256:") + 64


# ----- CA certificate profiles -----


def test_root_profile(ca: CertificateAuthority, clock: ManualClock) -> None:
    root = ca.root_certificate
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)  # self-signed
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    bc = _ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca  # type: ignore[attr-defined]
    ku = _ext(root, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature  # type: ignore[attr-defined]
    san = _ext(root, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]  # type: ignore[attr-defined]
    lifetime = root.not_valid_after_utc - clock.now()
    assert lifetime == timedelta(days=365)


def test_intermediate_profile(ca: CertificateAuthority, clock: ManualClock) -> None:
    inter = ca.intermediate_certificate
    inter.verify_directly_issued_by(ca.root_certificate)
    assert _ext(inter, x509.BasicConstraints).value.ca  # type: ignore[attr-defined]
    ku = _ext(inter, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign  # type: ignore[attr-defined]
    assert inter.not_valid_after_utc - clock.now() == timedelta(hours=24)


# ----- the X.509-SVID profile -----


def test_svid_profile(ca: CertificateAuthority, clock: ManualClock) -> None:
    key, pem = make_csr()
    svid = ca.sign_x509_svid(
        check_csr(pem),
        WORKLOAD,
        dns_names=["api.local"],
        ip_addresses=[ipaddress.ip_address("127.0.0.1")],
    )
    leaf = svid.leaf
    now = clock.now()
    # The key is the workload's, from the CSR.
    assert leaf.public_key() == key.public_key()
    assert isinstance(leaf.signature_hash_algorithm, type(leaf.signature_hash_algorithm))
    leaf.verify_directly_issued_by(svid.chain[1])
    assert svid.chain[1] == ca.intermediate_certificate
    # Empty subject, so the SAN is critical, with exactly one URI plus DNS/IP.
    assert leaf.subject == x509.Name([])
    san = _ext(leaf, x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(WORKLOAD)]  # type: ignore[attr-defined]
    assert san.value.get_values_for_type(x509.DNSName) == ["api.local"]  # type: ignore[attr-defined]
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]  # type: ignore[attr-defined]
    #
    bc = _ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca  # type: ignore[attr-defined]
    ku = _ext(leaf, x509.KeyUsage)
    assert ku.critical
    assert ku.value == x509.KeyUsage(
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
    eku = _ext(leaf, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}  # type: ignore[call-overload]
    ski = _ext(leaf, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())  # type: ignore[arg-type]
    aki = _ext(leaf, x509.AuthorityKeyIdentifier).value
    inter_ski = _ext(svid.chain[1], x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == inter_ski.digest  # type: ignore[attr-defined]
    # Serial: random, positive, at most 159 bits (RFC 5280: 20 octets).
    assert 0 < svid.serial < 2**159 and leaf.serial_number == svid.serial
    # Lifetime: 1 hour by default, backdated 30 s.
    assert leaf.not_valid_before_utc == now - timedelta(seconds=30)
    assert leaf.not_valid_after_utc == now + timedelta(hours=1) == svid.not_after
    # The PEM chain is leaf first.
    assert x509.load_pem_x509_certificates(svid.chain_pem()) == svid.chain


def test_serials_differ(ca: CertificateAuthority) -> None:
    _, pem = make_csr()
    csr = check_csr(pem)
    serials = {ca.sign_x509_svid(csr, WORKLOAD).serial for _ in range(20)}
    assert len(serials) == 20


def test_custom_ttl_and_cap_at_intermediate(tmp_path: Path, clock: ManualClock) -> None:
    ca = CertificateAuthority.init(
        tmp_path / "s", "example.org", intermediate_ttl=timedelta(hours=1), clock=clock
    )
    _, pem = make_csr()
    csr = check_csr(pem)
    assert ca.sign_x509_svid(csr, WORKLOAD, ttl=timedelta(minutes=10)).not_after == clock.now() + timedelta(
        minutes=10
    )
    clock.advance(timedelta(minutes=20))
    svid = ca.sign_x509_svid(csr, WORKLOAD, ttl=timedelta(hours=5))
    # Never outlives its signer.
    assert svid.not_after == svid.chain[1].not_valid_after_utc < clock.now() + timedelta(hours=5)


@pytest.mark.parametrize(
    ("sid", "match"),
    [
        ("spiffe://example.org", "X-04"),
        ("spiffe://other.org/x", "SV-01"),
    ],
)
def test_refuses_ids_it_must_not_issue(ca: CertificateAuthority, sid: str, match: str) -> None:
    _, pem = make_csr()
    with pytest.raises(ValueError, match=match):
        ca.sign_x509_svid(check_csr(pem), SpiffeId.parse(sid))


def test_refuses_non_positive_ttl(ca: CertificateAuthority) -> None:
    _, pem = make_csr()
    with pytest.raises(ValueError, match="ttl"):
        ca.sign_x509_svid(check_csr(pem), WORKLOAD, ttl=timedelta(0))


# ----- bundle -----


def test_bundle_holds_root_and_jwt_key_and_round_trips(ca: CertificateAuthority) -> None:
    bundle = ca.bundle()
    assert bundle.trust_domain == "example.org"
    assert bundle.x509_authorities == [ca.root_certificate]
    assert len(bundle.jwt_authorities) == 1
    doc = json.loads(bundle.to_spiffe_json())
    assert doc["spiffe_sequence"] == bundle.sequence >= 1
    assert doc["spiffe_refresh_hint"] == 300
    x509_entries = [k for k in doc["keys"] if k["use"] == "x509-svid"]
    jwt_entries = [k for k in doc["keys"] if k["use"] == "jwt-svid"]
    assert len(x509_entries) == 1 and "kid" not in x509_entries[0] and len(x509_entries[0]["x5c"]) == 1
    assert len(jwt_entries) == 1 and jwt_entries[0]["kid"] in bundle.jwt_authorities
    again = TrustBundle.from_spiffe_json("example.org", bundle.to_spiffe_json())
    assert again.x509_authorities == bundle.x509_authorities
    assert again.jwt_authorities.keys() == bundle.jwt_authorities.keys()
    assert again.sequence == bundle.sequence
    assert x509.load_pem_x509_certificates(bundle.to_pem()) == [ca.root_certificate]


def test_bundle_sequence_stable_without_change(ca: CertificateAuthority) -> None:
    assert ca.bundle().sequence == ca.bundle().sequence


def test_status_has_no_key_material(ca: CertificateAuthority, state_dir: Path) -> None:
    status = ca.status()
    assert status["fingerprint"] == ca.fingerprint()
    assert [r["state"] for r in status["roots"]] == ["active"]
    text = json.dumps(status)
    assert "PRIVATE" not in text
    for key_file in (state_dir / "ca" / "keys").iterdir():
        key_body = key_file.read_text().splitlines()[1]
        assert key_body not in text


def test_corrupt_metadata_is_a_clear_error(ca: CertificateAuthority, state_dir: Path) -> None:
    (state_dir / "ca" / "ca.json").write_text("{not json")
    with pytest.raises(CaStateError, match="cannot read"):
        CertificateAuthority.load(state_dir)


def test_missing_key_file_is_a_clear_error(ca: CertificateAuthority, state_dir: Path) -> None:
    for key_file in (state_dir / "ca" / "keys").glob("int-*"):
        key_file.unlink()
    with pytest.raises(CaStateError, match="cannot read CA key"):
        CertificateAuthority.load(state_dir)


def test_chain_that_includes_the_root_also_validates(ca: CertificateAuthority, clock: ManualClock) -> None:
    _, pem = make_csr()
    svid = ca.sign_x509_svid(check_csr(pem), WORKLOAD)
    chain = [*svid.chain, ca.root_certificate]
    assert validate_x509_svid(chain, ca.bundle(), clock.now()) == WORKLOAD
