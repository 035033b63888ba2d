"""Join tokens: how a new workload proves, once, that an operator vouched for it.

Text form: `tmjoin1.<64-hex CA fingerprint>.<token id>.<secret>`.

- The CA fingerprint (SHA-256 of the root's SubjectPublicKeyInfo, the kubeadm discovery
  hash) rides inside the token, as in k3s secure tokens: the joiner needs nothing but
  the token and an address, and pins the CA on first contact instead of trusting
  whatever certificate the address presents.
- The id is public (it appears in `token list` and in logs); the secret is 256 random
  bits and is never stored or logged: the store keeps only `sha256(secret)`. A plain
  hash (no salt, no KDF) is enough because the secret has full entropy.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

TOKEN_PREFIX = "tmjoin1"

# Long enough to copy a token into a deployment, short enough that a leaked, unused
# token is soon worthless.
DEFAULT_JOIN_TOKEN_TTL = timedelta(minutes=10)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{16}")


class InvalidJoinToken(ValueError):
    """The text is not a join token; the message says which part is wrong (never echoing the secret)."""


@dataclass(frozen=True)
class JoinToken:
    """A parsed join token. `str(token)` gives the text form back."""

    fingerprint_hex: str
    token_id: str
    secret: str

    @property
    def ca_fingerprint(self) -> str:
        """The pinned CA in `trustmesh ca fingerprint` form: `sha256:<hex>`."""
        return f"sha256:{self.fingerprint_hex}"

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}.{self.fingerprint_hex}.{self.token_id}.{self.secret}"

    def __repr__(self) -> str:
        # Never let the secret reach a log line through repr().
        return f"JoinToken(fingerprint_hex={self.fingerprint_hex!r}, token_id={self.token_id!r}, secret=...)"

    @classmethod
    def generate(cls, ca_fingerprint: str) -> JoinToken:
        """A fresh token for the CA with this fingerprint (`sha256:<hex>` or bare hex)."""
        fp = ca_fingerprint.removeprefix("sha256:")
        if not _HEX64.fullmatch(fp):
            raise ValueError("CA fingerprint must be sha256:<64 lowercase hex>")
        return cls(fingerprint_hex=fp, token_id=secrets.token_hex(8), secret=secrets.token_hex(32))

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """Parse the text form; raise `InvalidJoinToken` naming the part that is wrong."""
        parts = text.split(".")
        if len(parts) != 4:
            raise InvalidJoinToken(
                f"join token must have 4 dot-separated parts ({TOKEN_PREFIX}.<fingerprint>.<id>.<secret>),"
                f" got {len(parts)}"
            )
        prefix, fp, token_id, secret = parts
        if prefix != TOKEN_PREFIX:
            raise InvalidJoinToken(f"join token must start with {TOKEN_PREFIX!r}")
        if not _HEX64.fullmatch(fp):
            raise InvalidJoinToken("join token CA fingerprint must be 64 lowercase hex characters")
        if not _ID.fullmatch(token_id):
            raise InvalidJoinToken("join token id must be 16 lowercase hex characters")
        if not _HEX64.fullmatch(secret):
            raise InvalidJoinToken("join token secret must be 64 lowercase hex characters")
        return cls(fingerprint_hex=fp, token_id=token_id, secret=secret)


def hash_secret(secret: str) -> str:
    """What the store keeps instead of the secret: hex SHA-256."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)
