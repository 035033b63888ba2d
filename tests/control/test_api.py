"""The control-plane API over real HTTPS on loopback: join, renew, JWT-SVID, bundles, errors."""

from __future__ import annotations

import json
import ssl
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import structlog
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustmesh.ca.join_token import JoinToken
from trustmesh.control.join_client import (
    ControlPlaneClient,
    ControlPlaneError,
    Svid,
    client_context,
    join,
)
from trustmesh.control.testing import ControlPlaneHarness as Running
from trustmesh.identity import SvidError, TrustBundle, validate_jwt_svid, validate_x509_svid

TRUST_DOMAIN = "example.org"
API_ID = "spiffe://example.org/ns/default/sa/api"


def csr_pem(key: Any = None, *, uri: str | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def bad_signature_csr_pem() -> str:
    """A well-formed CSR whose signature does not match its content (one flipped bit)."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    der[-5] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


async def server_leaf(running: Running, ctx: ssl.SSLContext) -> tuple[x509.Certificate, str | None]:
    """The certificate the control plane presents to a new connection, and the TLS version."""
    host, port = running.address.rsplit(":", 1)
    tcp = await trio.open_tcp_stream(host, int(port))
    stream = trio.SSLStream(tcp, ctx, server_hostname=host)
    try:
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der), stream.version()
    finally:
        await stream.aclose()


def chain_of(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


async def test_healthz(running: Running) -> None:
    async with running.client() as c:
        r = await c.get("/healthz")
    assert r.status_code == 200


async def test_server_presents_control_plane_svid_with_listen_ip(running: Running) -> None:
    async with running.client() as c:  # verified: hostname 127.0.0.1 must match an IP SAN
        r = await c.get("/v1/bundle.pem")
    assert r.status_code == 200
    leaf, version = await server_leaf(running, running.verified_context())
    assert version == "TLSv1.3"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://{TRUST_DOMAIN}/trustmesh/control-plane"
    ]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


async def test_tls12_client_is_refused(running: Running) -> None:
    ctx = running.verified_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    async with httpx.AsyncClient(base_url=running.url, verify=ctx) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("/healthz")


async def test_join_returns_svid_for_the_tokens_id_not_the_csrs(running: Running) -> None:
    token = await running.token(API_ID)
    # The CSR asks for another identity; the API must ignore it.
    body = {"token": token, "csr": csr_pem(uri="spiffe://example.org/admin")}
    async with running.client() as c:
        r = await c.post("/v1/join", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"spiffe_id", "svid", "bundle", "expires_at"}
    assert data["spiffe_id"] == API_ID
    chain = chain_of(data["svid"])
    bundle = TrustBundle.from_pem(TRUST_DOMAIN, data["bundle"].encode())
    assert str(validate_x509_svid(chain, bundle, running.clock.now())) == API_ID
    assert datetime.fromisoformat(data["expires_at"]) == chain[0].not_valid_after_utc
    assert data["expires_at"].endswith("Z")

    serial = format(chain[0].serial_number, "x")
    audit = await running.store.get_svid(serial)
    token_id = JoinToken.parse(token).token_id
    assert audit is not None and audit.spiffe_id == API_ID and audit.auth == f"join-token:{token_id}"
    [record] = await running.store.list_join_tokens()
    assert record.state(running.clock.now()) == f"used by serial {serial}"


async def test_join_client_pins_ca_and_renews_over_mtls(running: Running) -> None:
    svid = await join(running.address, await running.token(API_ID))
    assert svid.spiffe_id == API_ID
    async with ControlPlaneClient(running.address, svid) as cp:
        renewed = await cp.renew()
    assert renewed.spiffe_id == API_ID
    assert renewed.serial != svid.serial
    audit = await running.store.get_svid(renewed.serial)
    assert audit is not None and audit.auth == f"renew:{svid.serial}"
    bundle = TrustBundle.from_pem(TRUST_DOMAIN, renewed.bundle_pem)
    leaf_chain = x509.load_pem_x509_certificates(renewed.chain_pem)
    assert str(validate_x509_svid(leaf_chain, bundle, running.clock.now())) == API_ID


async def test_join_client_refuses_a_server_without_the_pinned_ca(running: Running) -> None:
    token = JoinToken.parse(await running.token(API_ID))
    wrong = JoinToken(fingerprint_hex="0" * 64, token_id=token.token_id, secret=token.secret)
    with pytest.raises(ControlPlaneError) as info:
        await join(running.address, wrong)
    assert info.value.error == "ca_mismatch"
    # The token was never sent, so it is still usable.
    [record] = await running.store.list_join_tokens()
    assert record.used_at is None


async def test_jwt_svid_over_mtls(running: Running) -> None:
    svid = await join(running.address, await running.token(API_ID))
    async with ControlPlaneClient(running.address, svid) as cp:
        token = await cp.jwt_svid(["spiffe://example.org/reports"])
        bundle_json = await cp.bundle_json()
    bundle = TrustBundle.from_spiffe_json(TRUST_DOMAIN, bundle_json)
    jwt = validate_jwt_svid(token, bundle, "spiffe://example.org/reports", running.clock.now())
    assert str(jwt.spiffe_id) == API_ID


async def test_bundle_endpoints_match_the_ca(running: Running) -> None:
    async with running.client() as c:
        as_json = await c.get("/v1/bundle")
        as_pem = await c.get("/v1/bundle.pem")
    assert as_json.status_code == 200 and as_pem.status_code == 200
    parsed = TrustBundle.from_spiffe_json(TRUST_DOMAIN, as_json.text)
    assert parsed.x509_authorities == running.ca.bundle().x509_authorities
    assert as_pem.content == running.ca.bundle().to_pem()
    assert {k["use"] for k in json.loads(as_json.text)["keys"]} == {"x509-svid", "jwt-svid"}


async def test_fifty_concurrent_joins_with_one_token_issue_exactly_one_svid(running: Running) -> None:
    token = await running.token(API_ID)
    statuses: list[int] = []

    async with running.client(httpx.Limits(max_connections=50)) as c:

        async def one() -> None:
            r = await c.post("/v1/join", json={"token": token, "csr": csr_pem()})
            if r.status_code != 200:
                assert r.json()["error"] == "invalid_token"
            statuses.append(r.status_code)

        async with trio.open_nursery() as n:
            for _ in range(50):
                n.start_soon(one)
    assert sorted(statuses) == [200] + [403] * 49
    assert len(await running.store.list_svids()) == 1


async def _svid(running: Running) -> Svid:
    return await join(running.address, await running.token(API_ID))


BAD_JOIN_BODIES: dict[str, tuple[Any, int, str]] = {
    # name: (body (bytes are sent raw), status, error code)
    "malformed csr": ({"token": "T", "csr": "not a csr"}, 400, "invalid_csr"),
    "bad csr signature": ({"token": "T", "csr": "BADSIG"}, 400, "invalid_csr"),
    "rsa 1024 key": ({"token": "T", "csr": "RSA1024"}, 400, "invalid_csr"),
    "secp256k1 key": ({"token": "T", "csr": "K256"}, 400, "invalid_csr"),
    "body over 64 KiB": ({"token": "T", "csr": "C", "pad": "x" * (65 * 1024)}, 413, "body_too_large"),
    "invalid json": (b'{"token": ', 400, "invalid_json"),
    "json array": (b"[1, 2]", 400, "invalid_json"),
    "not utf-8": (b"\xff\xfe", 400, "invalid_json"),
    "missing token": ({"csr": "C"}, 400, "missing_field"),
    "missing csr": ({"token": "T"}, 400, "missing_field"),
    "token not a string": ({"token": 7, "csr": "C"}, 400, "invalid_field"),
    "malformed token": ({"token": "tmjoin1.abc", "csr": "C"}, 403, "invalid_token"),
    "unknown token": ({"token": "UNKNOWN", "csr": "C"}, 403, "invalid_token"),
    "wrong secret": ({"token": "WRONGSECRET", "csr": "C"}, 403, "invalid_token"),
}


def _materialise(value: Any, token: str) -> Any:
    if isinstance(value, dict):
        return {k: _materialise(v, token) for k, v in value.items()}
    t = JoinToken.parse(token)
    return (
        {
            "T": token,
            "C": csr_pem(),
            "BADSIG": bad_signature_csr_pem(),
            "RSA1024": csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            "K256": csr_pem(ec.generate_private_key(ec.SECP256K1())),
            "UNKNOWN": str(JoinToken(t.fingerprint_hex, "0123456789abcdef", t.secret)),
            "WRONGSECRET": str(JoinToken(t.fingerprint_hex, t.token_id, "ab" * 32)),
        }.get(value, value)
        if isinstance(value, str)
        else value
    )


@pytest.mark.parametrize("case", sorted(BAD_JOIN_BODIES))
async def test_bad_join_input_is_a_4xx_json_and_changes_nothing(running: Running, case: str) -> None:
    body, status, error = BAD_JOIN_BODIES[case]
    token = await running.token(API_ID)
    before = await running.snapshot()
    async with running.client() as c:
        if isinstance(body, bytes):
            r = await c.post("/v1/join", content=body, headers={"content-type": "application/json"})
        else:
            r = await c.post("/v1/join", json=_materialise(body, token))
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and r.json()["detail"]
    assert await running.snapshot() == before
    # And the token still works afterwards.
    async with running.client() as c:
        ok = await c.post("/v1/join", json={"token": token, "csr": csr_pem()})
    assert ok.status_code == 200


async def test_expired_and_used_tokens_look_the_same_to_callers_but_not_in_the_log(running: Running) -> None:
    expiring = await running.token(API_ID, ttl=timedelta(minutes=1))
    used = await running.token(API_ID)
    async with running.client() as c:
        assert (await c.post("/v1/join", json={"token": used, "csr": csr_pem()})).status_code == 200
        running.clock.advance(timedelta(minutes=2))
        before = await running.snapshot()
        with structlog.testing.capture_logs() as logs:
            r_expired = await c.post("/v1/join", json={"token": expiring, "csr": csr_pem()})
            r_used = await c.post("/v1/join", json={"token": used, "csr": csr_pem()})
    assert r_expired.status_code == r_used.status_code == 403
    assert r_expired.json() == r_used.json()
    assert "invalid, expired or already used" in r_used.json()["detail"]
    reasons = [e["reason"] for e in logs if e["event"] == "join_refused"]
    assert reasons == ["expired", "used"]
    assert await running.snapshot() == before
    for entry in logs:  # no secret in any log line
        assert JoinToken.parse(used).secret not in json.dumps(entry, default=str)


async def test_renew_without_client_certificate_is_401(running: Running) -> None:
    async with running.client() as c:
        r = await c.post("/v1/renew", json={"csr": csr_pem()})
        j = await c.post("/v1/jwt-svid", json={"audience": ["x"]})
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    assert j.status_code == 401


async def test_renew_with_expired_svid_is_403_and_records_nothing(running: Running) -> None:
    svid = await _svid(running)
    # Past the 1h SVID and past the 24h recovery grace (tests/control/test_expired_recovery.py
    # covers renewals within it).
    running.clock.advance(timedelta(hours=26))
    before = await running.snapshot()
    async with ControlPlaneClient(running.address, svid) as cp:
        with pytest.raises(ControlPlaneError) as info:
            await cp.renew()
    assert info.value.status == 403 and info.value.error == "join_token_needed"
    assert "expired" in info.value.detail
    assert await running.snapshot() == before


async def test_renew_with_foreign_trust_domain_svid_under_our_root_is_403(running: Running) -> None:
    # Only a compromised or buggy signer could make this; the API must still refuse it (B-02).
    svid = await _svid(running)
    signer = running.ca._active_intermediate()
    key = ec.generate_private_key(ec.SECP256R1())
    now = running.clock.now()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(signer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://other.org/ns/x")]),
            critical=True,
        )
        .sign(signer.key, hashes.SHA256())
    )
    chain_pem = leaf.public_bytes(serialization.Encoding.PEM) + signer.cert.public_bytes(
        serialization.Encoding.PEM
    )
    forged = Svid("spiffe://other.org/ns/x", chain_pem, key, svid.bundle_pem, svid.expires_at)
    before = await running.snapshot()
    async with ControlPlaneClient(running.address, forged) as cp:
        with pytest.raises(ControlPlaneError) as info:
            await cp.renew()
    assert info.value.status == 403 and info.value.error == "svid_rejected"
    assert await running.snapshot() == before


async def test_renew_with_svid_from_a_foreign_ca_fails_the_handshake(running: Running, tmp_path: Any) -> None:
    from trustmesh.ca import CertificateAuthority

    other = CertificateAuthority.init(tmp_path / "other", "other.org", clock=running.clock)
    from trustmesh.identity import SpiffeId

    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    issued = other.sign_x509_svid(csr, SpiffeId.parse("spiffe://other.org/ns/x"))
    own = await _svid(running)
    foreign = Svid("spiffe://other.org/ns/x", issued.chain_pem(), key, own.bundle_pem, issued.not_after)
    before = await running.snapshot()
    async with ControlPlaneClient(running.address, foreign) as cp:
        with pytest.raises(ControlPlaneError) as info:
            await cp.renew()
    assert info.value.status == 0  # refused in TLS, before HTTP: no response at all
    assert await running.snapshot() == before
    async with running.client() as c:  # and the server is still serving
        assert (await c.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"csr": "not a csr"}, "invalid_csr"),
        ({}, "missing_field"),
        ({"csr": ["x"]}, "invalid_field"),
    ],
)
async def test_bad_renew_input_is_4xx(running: Running, body: dict[str, Any], error: str) -> None:
    svid = await _svid(running)
    before = await running.snapshot()
    async with httpx.AsyncClient(base_url=running.url, verify=client_context(svid.bundle_pem, svid)) as c:
        r = await c.post("/v1/renew", json=body)
    assert 400 <= r.status_code < 500 and r.json()["error"] == error
    assert await running.snapshot() == before


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "missing_field"),
        ({"audience": []}, "invalid_audience"),
        ({"audience": "x"}, "invalid_field"),
        ({"audience": [""]}, "invalid_audience"),
        ({"audience": [1]}, "invalid_audience"),
    ],
)
async def test_bad_jwt_svid_input_is_4xx(running: Running, body: dict[str, Any], error: str) -> None:
    svid = await _svid(running)
    async with httpx.AsyncClient(base_url=running.url, verify=client_context(svid.bundle_pem, svid)) as c:
        r = await c.post("/v1/jwt-svid", json=body)
    assert r.status_code == 400 and r.json()["error"] == error


async def test_unknown_path_and_method_are_json_4xx(running: Running) -> None:
    async with running.client() as c:
        missing = await c.get("/v2/nothing")
        wrong_method = await c.get("/v1/join")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"


async def test_intermediate_rotation_at_half_life_reissues_server_cert(running: Running) -> None:
    svid = await _svid(running)
    old_intermediate = running.ca.intermediate_certificate
    running.clock.advance(timedelta(hours=12, minutes=1))  # half of the 24h intermediate
    await running.cp.rotate_now()
    new_intermediate = running.ca.intermediate_certificate
    assert new_intermediate != old_intermediate
    kinds = [k.kind for k in await running.store.list_ca_keys()]
    assert kinds.count("intermediate") == 2

    # The server's clock is 12h ahead of the machine's, so this client skips OpenSSL's
    # time check; our own validation below uses the injected clock.
    ctx = running.verified_context()
    ctx.verify_flags |= 0x200000  # X509_V_FLAG_NO_CHECK_TIME
    token = await running.token(API_ID)
    async with httpx.AsyncClient(base_url=running.url, verify=ctx) as c:
        r = await c.post("/v1/join", json={"token": token, "csr": csr_pem()})
    leaf, _ = await server_leaf(running, ctx)
    assert leaf.issuer == new_intermediate.subject  # new handshakes see the reissued server SVID
    assert r.status_code == 200, r.text
    chain = chain_of(r.json()["svid"])
    assert chain[1] == new_intermediate
    assert str(validate_x509_svid(chain, running.ca.bundle(), running.clock.now())) == API_ID
    # The SVID from before the rotation had a 1h TTL and is expired by now.
    with pytest.raises(SvidError) as info:
        validate_x509_svid(
            x509.load_pem_x509_certificates(svid.chain_pem), running.ca.bundle(), running.clock.now()
        )
    assert info.value.reason == "expired"


async def test_a_bug_becomes_a_logged_json_500_not_a_dropped_connection(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(token: str, csr: str) -> None:
        raise RuntimeError("simulated bug")

    assert running.cp.issuer is not None
    monkeypatch.setattr(running.cp.issuer, "join", broken)
    with structlog.testing.capture_logs() as logs:
        async with running.client() as c:
            r = await c.post("/v1/join", json={"token": "x", "csr": "y"})
    assert r.status_code == 500 and r.json()["error"] == "internal"
    assert any(e["event"] == "api_internal_error" for e in logs)
