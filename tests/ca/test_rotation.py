"""Rotation with an injected clock: no workload ever holds an SVID its peers cannot verify."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from tests.ca.forge import make_csr
from trustmesh.ca import CaError, CertificateAuthority, check_csr, spki_fingerprint
from trustmesh.clock import ManualClock
from trustmesh.identity import SpiffeId, SvidError, validate_jwt_svid, validate_x509_svid

WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/default/sa/api")


def _csr() -> x509.CertificateSigningRequest:
    return check_csr(make_csr()[1])


def _keys(state_dir: Path) -> set[str]:
    return {p.name for p in (state_dir / "ca" / "keys").iterdir()}


def test_not_due_before_half_life(ca: CertificateAuthority, clock: ManualClock) -> None:
    clock.advance(timedelta(hours=11, minutes=59))
    assert ca.rotate_if_due() is False


def test_intermediate_rotates_at_half_life(
    ca: CertificateAuthority, clock: ManualClock, state_dir: Path
) -> None:
    csr = _csr()
    before = ca.sign_x509_svid(csr, WORKLOAD)
    old_intermediate = ca.intermediate_certificate
    clock.advance(timedelta(hours=12))
    assert ca.rotate_if_due() is True
    assert ca.rotate_if_due() is False  # once only
    after = ca.sign_x509_svid(csr, WORKLOAD)
    assert after.chain[1] != old_intermediate
    after.chain[1].verify_directly_issued_by(ca.root_certificate)  # same root signs the new one
    # Both the SVID issued before and the one issued after validate against the current bundle.
    bundle = ca.bundle()
    now = clock.now()
    # `before` expired long ago (1 h TTL); check it at a time it was valid, against today's bundle.
    assert validate_x509_svid(before.chain, bundle, before.not_after - timedelta(minutes=1)) == WORKLOAD
    assert validate_x509_svid(after.chain, bundle, now) == WORKLOAD
    # The old intermediate's key is gone: it never signs again.
    assert len(_keys(state_dir)) == 3


def test_signing_rotates_by_itself(ca: CertificateAuthority, clock: ManualClock) -> None:
    """No timer needed: an issuance past the half-life rotates first."""
    first = ca.intermediate_certificate
    clock.advance(timedelta(hours=13))
    svid = ca.sign_x509_svid(_csr(), WORKLOAD)
    assert svid.chain[1] != first


def test_no_svid_outlives_its_signer_over_days(tmp_path: Path, clock: ManualClock) -> None:
    ca = CertificateAuthority.init(
        tmp_path / "s", "example.org", intermediate_ttl=timedelta(hours=2), clock=clock
    )
    csr = _csr()
    issued = []
    for _ in range(60):  # 60 x 47 min = about two days
        clock.advance(timedelta(minutes=47))
        ca.rotate_if_due()
        svid = ca.sign_x509_svid(csr, WORKLOAD, ttl=timedelta(hours=3))
        assert svid.not_after <= svid.chain[1].not_valid_after_utc
        assert svid.chain[1].not_valid_after_utc <= ca.root_certificate.not_valid_after_utc
        issued.append(svid)
    assert len({s.chain[1].serial_number for s in issued}) > 10
    bundle = ca.bundle()
    assert validate_x509_svid(issued[-1].chain, bundle, clock.now()) == WORKLOAD


def test_rotation_survives_reload(ca: CertificateAuthority, clock: ManualClock, state_dir: Path) -> None:
    clock.advance(timedelta(hours=12))
    assert ca.rotate_if_due()
    loaded = CertificateAuthority.load(state_dir, clock=clock)
    assert loaded.intermediate_certificate == ca.intermediate_certificate
    assert loaded.rotate_if_due() is False


def test_root_rotation_sequence(ca: CertificateAuthority, clock: ManualClock, state_dir: Path) -> None:
    csr = _csr()
    old_root = ca.root_certificate
    old_fp = ca.fingerprint()
    seq0 = ca.bundle().sequence
    old_svid = ca.sign_x509_svid(csr, WORKLOAD)
    old_jwt = ca.sign_jwt_svid(WORKLOAD, ["reports"])

    # 1. prepare: the new root is in the bundle at once, but nothing is signed with it yet.
    rotation = ca.rotate_root(timedelta(hours=2))
    assert rotation.activate_at == clock.now() + timedelta(hours=2)
    bundle = ca.bundle()
    assert bundle.sequence > seq0
    assert len(bundle.x509_authorities) == 2 and old_root in bundle.x509_authorities
    assert len(bundle.jwt_authorities) == 2
    assert rotation.fingerprint in {spki_fingerprint(c) for c in bundle.x509_authorities}
    assert ca.fingerprint() == old_fp
    during = ca.sign_x509_svid(csr, WORKLOAD, ttl=timedelta(hours=23))  # spans the switch
    during.chain[1].verify_directly_issued_by(old_root)
    with pytest.raises(CaError, match="already in progress"):
        ca.rotate_root(timedelta(hours=1))

    # Not yet: an hour in, the old root still signs.
    clock.advance(timedelta(hours=1))
    assert ca.rotate_if_due() is False
    assert ca.fingerprint() == old_fp

    # 2. activate once the overlap has passed.
    clock.advance(timedelta(hours=1))
    assert ca.rotate_if_due() is True
    assert ca.fingerprint() == rotation.fingerprint != old_fp
    new_svid = ca.sign_x509_svid(csr, WORKLOAD)
    new_svid.chain[1].verify_directly_issued_by(ca.root_certificate)
    new_jwt = ca.sign_jwt_svid(WORKLOAD, ["reports"])
    bundle = ca.bundle()
    now = clock.now()
    # Workloads holding old-root SVIDs still verify, and so do new ones.
    assert validate_x509_svid(during.chain, bundle, now) == WORKLOAD
    assert validate_x509_svid(new_svid.chain, bundle, now) == WORKLOAD
    assert validate_jwt_svid(new_jwt, bundle, "reports", now).spiffe_id == WORKLOAD
    assert validate_x509_svid(old_svid.chain, bundle, old_svid.not_after - timedelta(minutes=1)) == WORKLOAD
    assert (
        validate_jwt_svid(old_jwt, bundle, "reports", clock.now() - timedelta(hours=2)).spiffe_id == WORKLOAD
    )
    assert old_root in bundle.x509_authorities
    # The retired root's key is deleted at once: it never signs again.
    assert len(_keys(state_dir)) == 4  # new root, new intermediate, old + new JWT keys

    # 3. drop: once the last intermediate under the old root expires (24 h after init).
    seq_before_drop = bundle.sequence
    clock.advance(timedelta(hours=21, minutes=59))  # t0 + 23:59: old intermediate still valid
    assert old_root in ca.bundle().x509_authorities
    clock.advance(timedelta(minutes=2))  # t0 + 24:01
    bundle = ca.bundle()
    assert bundle.x509_authorities == [ca.root_certificate]
    assert len(bundle.jwt_authorities) == 1
    assert bundle.sequence > seq_before_drop
    ca.rotate_if_due()
    with pytest.raises(SvidError) as info:
        validate_x509_svid(during.chain, bundle, clock.now())
    assert info.value.reason == "expired"
    # Everything old is cleaned from disk.
    assert len(_keys(state_dir)) == 3
    reloaded = CertificateAuthority.load(state_dir, clock=clock)
    assert reloaded.bundle().x509_authorities == [ca.root_certificate]


def test_prepared_root_survives_reload(ca: CertificateAuthority, clock: ManualClock, state_dir: Path) -> None:
    rotation = ca.rotate_root(timedelta(hours=2))
    loaded = CertificateAuthority.load(state_dir, clock=clock)
    assert len(loaded.bundle().x509_authorities) == 2
    clock.advance(timedelta(hours=2))
    assert loaded.rotate_if_due() is True
    assert loaded.fingerprint() == rotation.fingerprint


def test_running_ca_sees_rotation_made_by_another_process(
    ca: CertificateAuthority, clock: ManualClock, state_dir: Path
) -> None:
    """`trustmesh ca rotate-root` runs in its own process while the control plane keeps its CA open."""
    cli = CertificateAuthority.load(state_dir, clock=clock)
    rotation = cli.rotate_root(timedelta(minutes=10))
    ca.rotate_if_due()  # the server's periodic tick
    assert rotation.fingerprint in {spki_fingerprint(c) for c in ca.bundle().x509_authorities}
    clock.advance(timedelta(minutes=10))
    assert ca.rotate_if_due() is True
    assert ca.fingerprint() == rotation.fingerprint


def test_negative_overlap_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="overlap"):
        ca.rotate_root(timedelta(seconds=-1))
