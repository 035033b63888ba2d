"""Certificate signing requests: the only way a workload's public key reaches the CA.

The private key never leaves the workload (it generates the key and sends a CSR), so this
module's job is to decide whether a CSR is fit to sign: well-formed PEM, a signature that
proves possession of the key, and a key strong enough to carry an identity. Anything
else in the CSR (subject, requested SANs, extensions) is ignored: the SPIFFE ID comes from
the join token or the caller's current SVID, never from the CSR.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import SignatureAlgorithmOID

MIN_RSA_BITS = 2048  # NIST SP 800-57: below 2048 bits RSA is no longer acceptable.
# P-256 and P-384 are what every TLS 1.3 stack supports; P-521 and the rest are refused
# so a sidecar never meets a leaf key its peer cannot use.
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
MAX_CSR_PEM_BYTES = 64 * 1024  # same ceiling as the API's request body

# ECDSA signature algorithms verified with the key `check_csr` has already loaded (see
# `_signature_valid`); any other algorithm goes through `is_signature_valid`.
_ECDSA_HASHES: dict[x509.ObjectIdentifier, type[hashes.HashAlgorithm]] = {
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: hashes.SHA256,
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: hashes.SHA384,
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: hashes.SHA512,
}


# The last CSR `check_csr` accepted and the key it loaded from it. `sign_x509_svid` nearly
# always signs exactly that CSR next, and loading the key again cost ~13 us of the ~360 us
# an issuance takes. Matched by identity: holding the CSR keeps its id from being reused.
_last_checked: tuple[x509.CertificateSigningRequest, CertificatePublicKeyTypes] | None = None


def csr_public_key(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes:
    """The CSR's public key, loaded once when `check_csr` has just checked this very CSR."""
    last = _last_checked
    if last is not None and last[0] is csr:
        return last[1]
    return csr.public_key()


class CsrRejected(ValueError):
    """A CSR the CA refuses to sign; the message says why, and is safe to show the caller."""


def check_public_key(key: CertificatePublicKeyTypes) -> None:
    """Refuse key types and sizes the CA will not certify (RSA < 2048, curves other than P-256/P-384)."""
    # EC first: it is what nearly every workload sends, and each isinstance on these ABCs costs.
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ALLOWED_CURVES):
            raise CsrRejected(f"EC curve {key.curve.name} is not allowed (use P-256 or P-384)")
        return
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrRejected(f"RSA key of {key.key_size} bits is too weak (minimum {MIN_RSA_BITS})")
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    raise CsrRejected(f"key type {type(key).__name__} is not allowed (use ECDSA P-256/P-384, Ed25519 or RSA)")


def check_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and verify it, or raise `CsrRejected` saying what is wrong.

    The key check comes before the signature check: verifying a signature made with a
    huge or exotic key is the expensive part, and a weak key is refused either way.
    """
    if not isinstance(pem, bytes):
        raise CsrRejected("CSR must be PEM bytes")
    if len(pem) > MAX_CSR_PEM_BYTES:
        raise CsrRejected(f"CSR is larger than {MAX_CSR_PEM_BYTES} bytes")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in pem:
        raise CsrRejected("malformed CSR: no 'BEGIN CERTIFICATE REQUEST' PEM block")
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as err:
        raise CsrRejected(f"malformed CSR: {err}") from err
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as err:
        raise CsrRejected(f"CSR public key cannot be read: {err}") from err
    check_public_key(key)
    try:
        signature_ok = _signature_valid(csr, key)
    except UnsupportedAlgorithm as err:
        raise CsrRejected(f"CSR signature algorithm is not supported: {err}") from err
    if not signature_ok:
        raise CsrRejected("CSR signature does not verify: it was not signed by the key it carries")
    global _last_checked
    _last_checked = (csr, key)
    return csr


def _signature_valid(csr: x509.CertificateSigningRequest, key: CertificatePublicKeyTypes) -> bool:
    """Does the CSR's signature verify under the key it carries (proof of possession)?

    For an EC key with an ECDSA-SHA2 signature this verifies with `key`, already loaded
    by the caller: `is_signature_valid` does the same check but loads the key again and
    costs about 1.5 times as much, and this check is half the CA's work per issuance.
    """
    if isinstance(key, ec.EllipticCurvePublicKey):
        hash_type = _ECDSA_HASHES.get(csr.signature_algorithm_oid)
        if hash_type is not None:
            try:
                key.verify(csr.signature, csr.tbs_certrequest_bytes, ec.ECDSA(hash_type()))
            except InvalidSignature:
                return False
            return True
    return csr.is_signature_valid
