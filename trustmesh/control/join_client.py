"""The workload side of the control-plane API: join with a token, renew, fetch JWT-SVIDs.

The sidecar and `trustmesh demo` both use this, so there is one client implementation.

First contact (join) follows the k3s secure-token pattern. The joiner has no trust
bundle yet, only the CA fingerprint inside its token, so it:
1. fetches `/v1/bundle.pem` over TLS *without* certificate verification,
2. keeps only the root whose SPKI SHA-256 equals the pinned fingerprint (anything else in
   that unauthenticated answer is ignored, so a man in the middle cannot add a root),
3. opens a verified TLS 1.3 connection trusting just that root, and POSTs `/v1/join`.
The bundle in the join response arrived over the verified connection and is trusted
from then on. The private key is generated here and never leaves the process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustmesh.ca.join_token import JoinToken


def load_chain_into(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """`load_cert_chain` from memory. The ssl module reads only files, so the key spends a
    moment in a private temporary directory (mode 0700, file 0600) that is removed at once.
    """
    with tempfile.TemporaryDirectory(prefix="trustmesh-tls-") as tmp:
        cert_path = Path(tmp) / "chain.pem"
        key_path = Path(tmp) / "key.pem"
        cert_path.write_bytes(chain_pem)
        fd = os.open(key_path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)


# Join and renew are a few milliseconds of work; anything slower is a stuck server.
DEFAULT_TIMEOUT_S = 10.0

PrivateKey = ec.EllipticCurvePrivateKey


class ControlPlaneError(Exception):
    """The control plane refused (`status` 4xx with its `error` code) or could not be reached (status 0)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}" if status == 0 else f"HTTP {status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


@dataclass(frozen=True)
class Svid:
    """An X.509-SVID held by a workload: chain (leaf first), its private key and the bundle."""

    spiffe_id: str
    chain_pem: bytes
    key: PrivateKey
    bundle_pem: bytes
    expires_at: datetime

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.chain_pem)[0]

    @property
    def serial(self) -> str:
        return format(self.leaf.serial_number, "x")

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def new_key_and_csr() -> tuple[PrivateKey, x509.CertificateSigningRequest]:
    """A fresh P-256 key and a CSR for it. The subject is empty: the SPIFFE ID comes from the token."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return key, csr


def spki_sha256_hex(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def client_context(roots_pem: bytes, svid: Svid | None = None) -> ssl.SSLContext:
    """TLS 1.3 client context trusting `roots_pem`, presenting `svid` as client certificate if given."""
    ctx = ssl.create_default_context(cadata=roots_pem.decode("ascii"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if svid is not None:
        load_chain_into(ctx, svid.chain_pem, svid.key_pem())
    return ctx


def _insecure_context() -> ssl.SSLContext:
    """For the one unauthenticated request of a join (step 1 above); its answer is checked by hash."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _base_url(address: str) -> str:
    return address if address.startswith("https://") else f"https://{address}"


async def _call(
    client: httpx.AsyncClient, method: str, path: str, body: object | None = None
) -> httpx.Response:
    try:
        response = await client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise ControlPlaneError(0, "unreachable", f"control plane at {client.base_url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            data = response.json()
            error, detail = str(data["error"]), str(data["detail"])
        except (json.JSONDecodeError, KeyError, TypeError):
            error, detail = "http_error", response.text[:200]
        raise ControlPlaneError(response.status_code, error, detail)
    return response


def _svid_from(response: httpx.Response, key: PrivateKey) -> Svid:
    data = response.json()
    chain_pem = data["svid"].encode("ascii")
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    # The CA must have signed *our* key; anything else is a broken or hostile server.
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if ours != theirs:
        raise ControlPlaneError(0, "bad_response", "the issued SVID does not carry the key we sent")
    return Svid(
        spiffe_id=data["spiffe_id"],
        chain_pem=chain_pem,
        key=key,
        bundle_pem=data["bundle"].encode("ascii"),
        expires_at=datetime.fromisoformat(data["expires_at"]),
    )


async def fetch_pinned_root(
    address: str, ca_fingerprint: str, *, timeout: float = DEFAULT_TIMEOUT_S
) -> bytes:
    """The PEM of the bundle root whose SPKI SHA-256 is `ca_fingerprint` (`sha256:<hex>` or hex).

    Raises `ControlPlaneError` if the server offers no such root: the address is not the
    control plane the token was made for, or someone is in the middle.
    """
    want = ca_fingerprint.removeprefix("sha256:")
    async with httpx.AsyncClient(
        base_url=_base_url(address), verify=_insecure_context(), timeout=timeout
    ) as c:
        response = await _call(c, "GET", "/v1/bundle.pem")
    try:
        roots = x509.load_pem_x509_certificates(response.content)
    except ValueError as exc:
        raise ControlPlaneError(0, "bad_response", f"bundle.pem is not PEM certificates: {exc}") from exc
    for root in roots:
        if hmac.compare_digest(spki_sha256_hex(root), want):
            return root.public_bytes(serialization.Encoding.PEM)
    raise ControlPlaneError(
        0,
        "ca_mismatch",
        f"control plane at {address} does not serve the CA pinned by the token (sha256:{want})",
    )


async def join(
    address: str, token: str | JoinToken, *, key: PrivateKey | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> Svid:
    """Join with a single-use token: pin the CA, send a CSR, get an SVID for the token's SPIFFE ID."""
    parsed = token if isinstance(token, JoinToken) else JoinToken.parse(token)
    root_pem = await fetch_pinned_root(address, parsed.ca_fingerprint, timeout=timeout)
    if key is None:
        key, csr = new_key_and_csr()
    else:
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    body = {"token": str(parsed), "csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii")}
    async with httpx.AsyncClient(
        base_url=_base_url(address), verify=client_context(root_pem), timeout=timeout
    ) as client:
        response = await _call(client, "POST", "/v1/join", body)
    return _svid_from(response, key)


class ControlPlaneClient:
    """A kept-alive mTLS connection to the control plane, authenticated by the workload's SVID.

    Use as `async with ControlPlaneClient(address, svid) as cp: new = await cp.renew()`.
    The connection keeps presenting the SVID it was opened with; open a new client after
    a renewal to present the new one.
    """

    def __init__(self, address: str, svid: Svid, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.svid = svid
        self._client = httpx.AsyncClient(
            base_url=_base_url(address), verify=client_context(svid.bundle_pem, svid), timeout=timeout
        )

    async def __aenter__(self) -> ControlPlaneClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.aclose()

    async def renew(self, key: PrivateKey | None = None) -> Svid:
        """A new SVID for the same SPIFFE ID, for a fresh key unless `key` is given."""
        if key is None:
            key, csr = new_key_and_csr()
        else:
            csr = (
                x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
            )
        body = {"csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii")}
        return _svid_from(await _call(self._client, "POST", "/v1/renew", body), key)

    async def jwt_svid(self, audience: Sequence[str]) -> str:
        response = await _call(self._client, "POST", "/v1/jwt-svid", {"audience": list(audience)})
        return str(response.json()["token"])

    async def bundle_json(self) -> str:
        return (await _call(self._client, "GET", "/v1/bundle")).text

    async def policy_status(self) -> dict[str, Any]:
        """`GET /v1/policy`: the active revision, its policies and the last refused commit."""
        result: dict[str, Any] = (await _call(self._client, "GET", "/v1/policy")).json()
        return result

    async def policy_revision(self, known: str | None = None) -> dict[str, Any]:
        """`GET /v1/policy/revision`: the active revision's files, or `unchanged` if it is `known`."""
        path = "/v1/policy/revision" if known is None else f"/v1/policy/revision?known={known}"
        result: dict[str, Any] = (await _call(self._client, "GET", path)).json()
        return result
