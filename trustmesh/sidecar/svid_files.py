"""What the sidecar keeps in `--data-dir` so a restart needs no new join token.

Layout (the directory is 0700):
  svid.pem     0600  private key, then the SVID chain (leaf first): one file, so a renewal
                     replaces key and certificate in a single atomic rename and a crash can
                     never leave a key next to a certificate for another key
  bundle.pem   0600  the trust bundle's X.509 roots

Both are written to a temporary file in the same directory, fsynced and renamed over the
old one. The format is plain PEM so `openssl x509 -in svid.pem` works for an operator,
and `ssl.SSLContext.load_cert_chain(svid.pem)` reads key and chain from the one file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

log = structlog.get_logger(__name__)

SVID_FILE = "svid.pem"
BUNDLE_FILE = "bundle.pem"


class PersistedSvidError(ValueError):
    """The data directory holds something that is not a usable SVID (corrupt, mismatched key)."""


@dataclass(frozen=True)
class PersistedSvid:
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]
    bundle_pem: bytes


def prepare_data_dir(path: Path) -> None:
    """Create the data directory 0700, or tighten an existing one: it holds a private key."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o700)
        log.warning("data_dir_permissions_tightened", path=str(path), was=oct(mode))


def svid_path(data_dir: Path) -> Path:
    return data_dir / SVID_FILE


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def chain_pem(chain: tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def save(data_dir: Path, svid: PersistedSvid) -> None:
    """Persist key + chain and bundle atomically (each file is replaced whole or not at all)."""
    _atomic_write(data_dir / SVID_FILE, key_pem(svid.key) + chain_pem(svid.chain))
    _atomic_write(data_dir / BUNDLE_FILE, svid.bundle_pem)


def save_bundle(data_dir: Path, bundle_pem: bytes) -> None:
    _atomic_write(data_dir / BUNDLE_FILE, bundle_pem)


def load(data_dir: Path) -> PersistedSvid | None:
    """The persisted SVID, or None if there is none; PersistedSvidError if it is unusable."""
    svid_file = data_dir / SVID_FILE
    bundle_file = data_dir / BUNDLE_FILE
    if not svid_file.exists():
        return None
    mode = stat.S_IMODE(svid_file.stat().st_mode)
    if mode & 0o077:
        raise PersistedSvidError(f"{svid_file} is readable by others (mode {oct(mode)}): refusing to use it")
    data = svid_file.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
        chain = tuple(x509.load_pem_x509_certificates(data))
        bundle_pem = bundle_file.read_bytes()
        x509.load_pem_x509_certificates(bundle_pem)
    except (ValueError, FileNotFoundError) as err:
        raise PersistedSvidError(f"{data_dir} holds an unreadable SVID or bundle: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PersistedSvidError(f"{svid_file}: key is not ECDSA")
    if chain[0].public_key() != key.public_key():
        raise PersistedSvidError(f"{svid_file}: the key does not belong to the leaf certificate")
    return PersistedSvid(key, chain, bundle_pem)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover could carry other permissions; O_EXCL makes ours 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
