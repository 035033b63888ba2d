"""Independent check: the SPIFFE project's own Python library accepts what trustmesh issues."""

from __future__ import annotations

from pathlib import Path

import spiffe
from cryptography import x509

from tests.ca.forge import key_pem, make_csr
from trustmesh.ca import CertificateAuthority, check_csr
from trustmesh.clock import SystemClock
from trustmesh.identity import SpiffeId


def test_py_spiffe_parses_x509_svid_and_bundle(ca: CertificateAuthority) -> None:
    key, pem = make_csr()
    issued = ca.sign_x509_svid(check_csr(pem), SpiffeId.parse("spiffe://example.org/ns/default/sa/api"))
    svid = spiffe.X509Svid.parse(issued.chain_pem(), key_pem(key))
    assert str(svid.spiffe_id) == "spiffe://example.org/ns/default/sa/api"
    assert [c.serial_number for c in svid.cert_chain] == [c.serial_number for c in issued.chain]
    td = spiffe.TrustDomain("example.org")
    bundle = spiffe.X509Bundle.parse(td, ca.bundle().to_pem())
    roots = bundle.x509_authorities
    assert {r.serial_number for r in roots} == {ca.root_certificate.serial_number}
    # The leaf's chain ends at a root py-spiffe holds for the trust domain.
    issued.chain[-1].verify_directly_issued_by(next(iter(roots)))
    assert isinstance(next(iter(roots)), x509.Certificate)


def test_py_spiffe_validates_jwt_svid_with_our_bundle(tmp_path: Path) -> None:
    # py-spiffe checks `exp` against the real clock, so this CA runs on the system clock.
    ca = CertificateAuthority.init(tmp_path / "s", "example.org", clock=SystemClock())
    token = ca.sign_jwt_svid(SpiffeId.parse("spiffe://example.org/api"), ["reports"])
    td = spiffe.TrustDomain("example.org")
    # py-spiffe's JwtBundle.parse keeps every JWK whatever its `use` (SPIFFE.md §7), so it is
    # given the jwt-svid keys, which is exactly what the Workload API's JWT bundles carry (W-14).
    jwt_bundle = spiffe.JwtBundle.parse(td, ca.bundle().jwks_json().encode())
    svid = spiffe.JwtSvid.parse_and_validate(token, jwt_bundle, {"reports"})
    assert str(svid.spiffe_id) == "spiffe://example.org/api"
    assert svid.audience == {"reports"}
