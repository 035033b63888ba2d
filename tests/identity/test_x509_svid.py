"""X.509-SVID validation: each way an SVID can be untrustworthy has its own reason."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.ca.forge import forge_leaf, forge_with_ca, intermediate_of, make_csr
from trustmesh.ca import CertificateAuthority, check_csr
from trustmesh.clock import ManualClock
from trustmesh.identity import SpiffeId, SvidError, TrustBundle, leaf_spiffe_id, validate_x509_svid

WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/default/sa/api")


def _issue(ca: CertificateAuthority) -> list[x509.Certificate]:
    return ca.sign_x509_svid(check_csr(make_csr()[1]), WORKLOAD).chain


def _reason(chain: list[x509.Certificate], bundle: TrustBundle, clock: ManualClock) -> str:
    with pytest.raises(SvidError) as info:
        validate_x509_svid(chain, bundle, clock.now())
    assert isinstance(info.value, ValueError)
    return info.value.reason


def test_issued_svid_validates(ca: CertificateAuthority, clock: ManualClock) -> None:
    chain = _issue(ca)
    assert validate_x509_svid(chain, ca.bundle(), clock.now()) == WORKLOAD
    assert leaf_spiffe_id(chain[0]) == WORKLOAD


def test_forged_but_well_formed_leaf_validates(
    ca: CertificateAuthority, clock: ManualClock, state_dir: Path
) -> None:
    """Control case: the forging helper itself makes valid SVIDs unless told otherwise."""
    chain = forge_with_ca(ca, state_dir, clock.now())
    assert str(validate_x509_svid(chain, ca.bundle(), clock.now())) == "spiffe://example.org/forged"


def test_leaf_from_a_foreign_ca(ca: CertificateAuthority, clock: ManualClock, tmp_path: Path) -> None:
    """X-19: same trust domain name, different CA: no path to our roots."""
    impostor = CertificateAuthority.init(tmp_path / "impostor", "example.org", clock=clock)
    assert _reason(_issue(impostor), ca.bundle(), clock) == "untrusted_chain"


def test_expired_leaf(ca: CertificateAuthority, clock: ManualClock) -> None:
    chain = _issue(ca)
    clock.advance(timedelta(hours=1, seconds=1))
    assert _reason(chain, ca.bundle(), clock) == "expired"


def test_not_yet_valid_leaf(ca: CertificateAuthority, clock: ManualClock) -> None:
    chain = _issue(ca)
    clock.advance(timedelta(seconds=-31))  # issued backdated by 30 s, no more
    assert _reason(chain, ca.bundle(), clock) == "not_yet_valid"


def test_within_backdate_is_valid(ca: CertificateAuthority, clock: ManualClock) -> None:
    chain = _issue(ca)
    clock.advance(timedelta(seconds=-29))  # a validator whose clock is 29 s behind the CA's
    assert validate_x509_svid(chain, ca.bundle(), clock.now()) == WORKLOAD


FORGERIES: list[tuple[str, dict[str, Any], str]] = [
    ("X-10 CA-flagged leaf", {"ca": True}, "leaf_is_ca"),
    ("X-02 two URI SANs", {"uris": ["spiffe://example.org/a", "spiffe://example.org/b"]}, "uri_san_count"),
    (
        "X-02 spiffe + https URI",
        {"uris": ["spiffe://example.org/a", "https://example.org/"]},
        "uri_san_count",
    ),
    ("X-01 no SAN", {"uris": []}, "uri_san_count"),
    ("X-16 keyCertSign leaf", {"key_cert_sign": True}, "leaf_key_usage"),
    ("X-16 cRLSign leaf", {"crl_sign": True}, "leaf_key_usage"),
    ("X-15 no digitalSignature", {"digital_signature": False}, "leaf_key_usage"),
    ("X-13 no KeyUsage", {"key_usage": False}, "leaf_key_usage"),
    ("X-04 leaf without path", {"uris": ["spiffe://example.org"]}, "leaf_no_path"),
    ("B-02 foreign trust domain", {"uris": ["spiffe://other.org/a"]}, "foreign_trust_domain"),
    ("ID-07 upper-case trust domain", {"uris": ["spiffe://EXAMPLE.org/a"]}, "invalid_spiffe_id"),
    ("ID-01 not spiffe scheme", {"uris": ["https://example.org/a"]}, "invalid_spiffe_id"),
    ("ID-14 trailing slash", {"uris": ["spiffe://example.org/a/"]}, "invalid_spiffe_id"),
]


@pytest.mark.parametrize(("case", "flaws", "reason"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_forged_leaf_rejected(
    ca: CertificateAuthority,
    clock: ManualClock,
    state_dir: Path,
    case: str,
    flaws: dict[str, Any],
    reason: str,
) -> None:
    chain = forge_with_ca(ca, state_dir, clock.now(), **flaws)
    assert _reason(chain, ca.bundle(), clock) == reason, case


def test_leaf_signed_by_a_leaf(ca: CertificateAuthority, clock: ManualClock, state_dir: Path) -> None:
    """X-11: a workload cannot mint identities with its own SVID key."""
    now = clock.now()
    parent_chain, parent_key = forge_leaf(
        intermediate_of(state_dir), not_before=now - timedelta(minutes=1), not_after=now + timedelta(hours=1)
    )
    child, _ = forge_leaf(
        (parent_chain[0], parent_key),
        uris=["spiffe://example.org/minted"],
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=1),
    )
    chain = [child[0], parent_chain[0], parent_chain[1]]
    assert _reason(chain, ca.bundle(), clock) == "signer_not_ca"


def test_missing_intermediate(ca: CertificateAuthority, clock: ManualClock) -> None:
    chain = _issue(ca)
    assert _reason(chain[:1], ca.bundle(), clock) == "untrusted_chain"


def test_wrong_key_same_names(ca: CertificateAuthority, clock: ManualClock, state_dir: Path) -> None:
    """A leaf claiming our intermediate as issuer but signed by another key fails the signature check."""
    inter, _ = intermediate_of(state_dir)
    now = clock.now()
    chain, _ = forge_leaf(
        (inter, ec.generate_private_key(ec.SECP256R1())),
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=1),
    )
    assert _reason(chain, ca.bundle(), clock) == "untrusted_chain"


def test_empty_bundle_trusts_nothing(ca: CertificateAuthority, clock: ManualClock) -> None:
    """B-07: no usable keys means every SVID of the trust domain is untrusted."""
    assert _reason(_issue(ca), TrustBundle("example.org"), clock) == "untrusted_chain"


def test_bundle_of_another_trust_domain(ca: CertificateAuthority, clock: ManualClock) -> None:
    bundle = ca.bundle()
    other = TrustBundle("other.org", bundle.x509_authorities)
    assert _reason(_issue(ca), other, clock) == "foreign_trust_domain"


def test_empty_chain(ca: CertificateAuthority, clock: ManualClock) -> None:
    assert _reason([], ca.bundle(), clock) == "empty_chain"
