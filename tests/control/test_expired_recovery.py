"""Recovery of an SVID that expired while the control plane was unreachable (Issuer._recoverable).

At the issuer level with a ManualClock: the renewal is called with the caller's chain as
TLS would hand it over, so every refusal is the issuer's own decision (the TLS layer
in front of it checks everything but time). One test goes through real HTTPS to show
that the handshake lets an expired client certificate reach the issuer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustmesh.ca import CertificateAuthority
from trustmesh.clock import ManualClock
from trustmesh.control.errors import ApiError
from trustmesh.control.issuer import DEFAULT_EXPIRED_RENEW_GRACE, JOIN_TOKEN_NEEDED, Issuer, serial_text
from trustmesh.control.join_client import ControlPlaneClient, Svid, join
from trustmesh.control.testing import ControlPlaneHarness
from trustmesh.identity import SpiffeId, validate_x509_svid
from trustmesh.store import IssuedSvidRecord, Store, open_store

API_ID = "spiffe://example.org/ns/default/sa/api"
SVID_TTL = timedelta(hours=1)


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _chain(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


@pytest.fixture
async def store(state_dir: Path) -> AsyncIterator[Store]:
    opened = await open_store(state_dir, None)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
def issuer(state_dir: Path, clock: ManualClock, store: Store) -> Issuer:
    ca = CertificateAuthority.load(state_dir, clock=clock)
    return Issuer(ca, store, clock, svid_ttl=SVID_TTL)


async def _joined(issuer: Issuer) -> list[x509.Certificate]:
    token = await issuer.create_token(SpiffeId.parse(API_ID), "api")
    return _chain((await issuer.join(str(token), _csr())).svid_pem)


async def _refused(issuer: Issuer, chain: list[x509.Certificate]) -> ApiError:
    before = await issuer.store.list_svids()
    with pytest.raises(ApiError) as info:
        await issuer.renew(chain, _csr())
    assert await issuer.store.list_svids() == before, "a refused recovery records nothing"
    return info.value


async def test_within_the_grace_an_expired_svid_is_renewed_and_audited_as_recover(
    issuer: Issuer, clock: ManualClock
) -> None:
    chain = await _joined(issuer)
    clock.advance(SVID_TTL + timedelta(hours=3))  # expired three hours ago; grace is a day
    renewed = await issuer.renew(chain, _csr())
    new_chain = _chain(renewed.svid_pem)
    assert str(validate_x509_svid(new_chain, issuer.ca.bundle(), clock.now())) == API_ID
    row = await issuer.store.get_svid(renewed.serial)
    assert row is not None and row.auth == f"recover:{serial_text(chain[0].serial_number)}"
    assert row.spiffe_id == API_ID
    # The recovered SVID is an ordinary one from now on: it renews the usual way.
    again = await issuer.renew(new_chain, _csr())
    row = await issuer.store.get_svid(again.serial)
    assert row is not None and row.auth == f"renew:{renewed.serial}"


async def test_beyond_the_grace_the_refusal_says_a_new_join_token_is_needed(
    issuer: Issuer, clock: ManualClock
) -> None:
    chain = await _joined(issuer)
    clock.advance(SVID_TTL + DEFAULT_EXPIRED_RENEW_GRACE + timedelta(minutes=1))
    error = await _refused(issuer, chain)
    assert error.status == 403 and error.error == JOIN_TOKEN_NEEDED
    assert "recovery grace (24h)" in error.detail
    assert "a new join token is needed" in error.detail


async def test_a_grace_of_zero_turns_recovery_off(issuer: Issuer, clock: ManualClock) -> None:
    issuer.expired_renew_grace = timedelta(0)
    chain = await _joined(issuer)
    clock.advance(SVID_TTL + timedelta(seconds=5))
    error = await _refused(issuer, chain)
    assert error.error == JOIN_TOKEN_NEEDED and "turned off" in error.detail


async def test_an_svid_already_renewed_cannot_be_recovered(issuer: Issuer, clock: ManualClock) -> None:
    chain = await _joined(issuer)
    await issuer.renew(chain, _csr())  # renewed while valid: this key is retired
    clock.advance(SVID_TTL + timedelta(minutes=5))
    error = await _refused(issuer, chain)
    assert error.error == JOIN_TOKEN_NEEDED and "already been renewed" in error.detail


async def test_an_svid_is_recovered_once_only(issuer: Issuer, clock: ManualClock) -> None:
    chain = await _joined(issuer)
    clock.advance(SVID_TTL + timedelta(minutes=5))
    await issuer.renew(chain, _csr())
    error = await _refused(issuer, chain)
    assert "already been renewed" in error.detail


async def test_a_serial_missing_from_the_audit_log_is_refused(issuer: Issuer, clock: ManualClock) -> None:
    # Signed by our CA (so it chains to our root) but never issued through the API: e.g. a
    # restored backup of another deployment's database, or a signer misused out of band.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    issued = issuer.ca.sign_x509_svid(csr, SpiffeId.parse(API_ID), ttl=SVID_TTL)
    clock.advance(SVID_TTL + timedelta(minutes=5))
    error = await _refused(issuer, issued.chain)
    assert error.error == JOIN_TOKEN_NEEDED and "no record of issuing it" in error.detail


async def test_a_serial_recorded_for_another_spiffe_id_is_refused(issuer: Issuer, clock: ManualClock) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    issued = issuer.ca.sign_x509_svid(csr, SpiffeId.parse(API_ID), ttl=SVID_TTL)
    await issuer.store.record_svid(
        IssuedSvidRecord(
            serial_text(issued.serial),
            "spiffe://example.org/ns/default/sa/web",
            issued.not_after,
            clock.now(),
            "x",
        )
    )
    clock.advance(SVID_TTL + timedelta(minutes=5))
    error = await _refused(issuer, issued.chain)
    assert "no record of issuing it to " + API_ID in error.detail


async def test_an_svid_from_a_foreign_ca_is_refused_even_with_a_matching_audit_row(
    issuer: Issuer, clock: ManualClock, tmp_path: Path
) -> None:
    # Same trust domain, another CA: in production the TLS handshake already refuses it;
    # the issuer must not rely on that. Even a forged audit row for its serial does not help.
    other = CertificateAuthority.init(tmp_path / "other", "example.org", clock=clock)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    foreign = other.sign_x509_svid(csr, SpiffeId.parse(API_ID), ttl=SVID_TTL)
    await issuer.store.record_svid(
        IssuedSvidRecord(serial_text(foreign.serial), API_ID, foreign.not_after, clock.now(), "join-token:x")
    )
    clock.advance(SVID_TTL + timedelta(minutes=5))
    error = await _refused(issuer, foreign.chain)
    assert error.error == JOIN_TOKEN_NEEDED and "does not validate" in error.detail


async def test_a_root_gone_from_the_bundle_ends_recovery(issuer: Issuer, clock: ManualClock) -> None:
    chain = await _joined(issuer)
    old_root = issuer.ca.root_certificate
    # Rotate the root with a short overlap and let the old root's last intermediate expire:
    # the old root leaves the bundle, and an SVID under it can no longer be vouched for.
    issuer.ca.rotate_root(overlap=timedelta(minutes=1))
    clock.advance(timedelta(minutes=2))
    issuer.ca.rotate_if_due()
    clock.advance(issuer.ca.intermediate_ttl + timedelta(minutes=1))
    issuer.ca.rotate_if_due()
    assert old_root not in issuer.ca.bundle().x509_authorities
    issuer.expired_renew_grace = timedelta(days=30)  # time alone would not refuse it
    error = await _refused(issuer, chain)
    assert error.error == JOIN_TOKEN_NEEDED and "does not validate" in error.detail


async def test_over_https_an_expired_client_certificate_reaches_the_issuer(
    running: ControlPlaneHarness,
) -> None:
    svid: Svid = await join(running.address, await running.token(API_ID))
    running.clock.advance(timedelta(hours=2))  # the harness's SVIDs live 1 h
    async with ControlPlaneClient(running.address, svid) as cp:
        renewed = await cp.renew()
    assert renewed.spiffe_id == API_ID
    audit = await running.store.get_svid(renewed.serial)
    assert audit is not None and audit.auth == f"recover:{svid.serial}"


async def test_two_replicas_racing_to_recover_one_expired_svid_issue_one(
    state_dir: Path, clock: ManualClock, issuer: Issuer, store: Store
) -> None:
    """Each replica's recovery lock orders only its own requests; the store orders both.

    The interleaving a race produces, made deterministic: both replicas have checked the
    audit log (no recovery of this serial yet) before either records one.
    """
    other = Issuer(CertificateAuthority.load(state_dir, clock=clock), store, clock, svid_ttl=SVID_TTL)
    chain = await _joined(issuer)
    clock.advance(SVID_TTL + timedelta(hours=1))
    caller_a = await issuer._recoverable(chain)
    caller_b = await other._recoverable(chain)
    won = await issuer._renew_for(caller_a, chain, x509.load_pem_x509_csr(_csr().encode()), "recover")
    before = await store.list_svids()
    with pytest.raises(ApiError) as info:
        await other._renew_for(caller_b, chain, x509.load_pem_x509_csr(_csr().encode()), "recover")
    assert info.value.status == 403 and info.value.error == JOIN_TOKEN_NEEDED
    assert "already been renewed" in info.value.detail
    after = await store.list_svids()
    assert after == before, "the loser's certificate is discarded, never recorded"
    recoveries = [row for row in after if row.auth.startswith("recover:")]
    assert [row.serial for row in recoveries] == [won.serial]
