"""The CA's files in the state directory: where keys live, with which permissions, written how.

Layout (everything the CA owns sits under `<state_dir>/ca/`; the store's database and
anything else other packages keep in `<state_dir>` are not touched):

    <state_dir>/                 0700  (created if missing; tightened to 0700 by `ca init`)
      ca/                        0700
        ca.json                  0600  metadata: trust domain, TTLs, roots, intermediates,
                                       JWT keys with their state, bundle sequence
        lock                     0600  flock(2) target: one writer at a time (CLI vs server)
        certs/                   0700
          <id>.crt.pem           0644  root and intermediate certificates (public)
        keys/                    0700
          <id>.key.pem           0600  PKCS#8 PEM private keys (roots, intermediates,
                                       JWT signing keys), unencrypted: the directory
                                       permissions are the protection, as with SPIRE's
                                       disk KeyManager

`ca.json` is the commit point: key and certificate files are written first, each through
a temporary file and `os.replace`, and `ca.json` last, so a crash leaves either the old
CA or the new one, never a metadata file that names a missing key. Private keys of
superseded intermediates and retired roots are deleted as soon as nothing can use them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

CA_DIRNAME = "ca"
METADATA_FILE = "ca.json"
DIR_MODE = 0o700
KEY_MODE = 0o600
CERT_MODE = 0o644


class CaStateError(Exception):
    """The state directory does not hold a usable CA (missing, corrupt or unreadable files)."""


def ca_dir(state_dir: Path) -> Path:
    return Path(state_dir) / CA_DIRNAME


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) if needed and force mode 0700, whatever the umask says."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` via a temporary file created with `mode` from the start.

    The mode is given to `os.open`, not set afterwards, so a private key is never readable
    by others even for an instant; `os.replace` makes the switch atomic.
    """
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; fchmod is not.
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        os.close(fd)
    os.replace(tmp, path)


class KeyStore:
    """Reads and writes the CA's keys, certificates and metadata under `<state_dir>/ca`."""

    def __init__(self, state_dir: Path) -> None:
        self.root = ca_dir(state_dir)
        self.certs = self.root / "certs"
        self.keys = self.root / "keys"
        self.metadata_path = self.root / METADATA_FILE

    def exists(self) -> bool:
        return self.root.exists()

    def create_dirs(self, state_dir: Path) -> None:
        make_private_dir(Path(state_dir))
        for d in (self.root, self.certs, self.keys):
            make_private_dir(d)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock so a CLI `rotate-root` and a running server never interleave writes."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, KEY_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # ----- metadata -----

    def metadata_stamp(self) -> tuple[int, int]:
        """(inode, mtime_ns) of ca.json: changes whenever another process committed new state."""
        st = os.stat(self.metadata_path)
        return (st.st_ino, st.st_mtime_ns)

    def read_metadata(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.metadata_path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise CaStateError(f"no CA in {self.root.parent} (run `trustmesh ca init` first)") from err
        except (OSError, ValueError) as err:
            raise CaStateError(f"cannot read {self.metadata_path}: {err}") from err
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise CaStateError(f"{self.metadata_path} is not a trustmesh CA metadata file (version 1)")
        return doc

    def write_metadata(self, doc: dict[str, Any]) -> None:
        write_atomic(self.metadata_path, json.dumps(doc, indent=2, sort_keys=True).encode(), KEY_MODE)

    # ----- keys and certificates -----

    def write_key(self, key_id: str, key: ec.EllipticCurvePrivateKey) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_atomic(self.keys / f"{key_id}.key.pem", pem, KEY_MODE)

    def read_key(self, key_id: str) -> ec.EllipticCurvePrivateKey:
        path = self.keys / f"{key_id}.key.pem"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as err:
            raise CaStateError(f"cannot read CA key {path}: {err}") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaStateError(f"CA key {path} is not an EC key")
        return key

    def delete_key(self, key_id: str) -> None:
        (self.keys / f"{key_id}.key.pem").unlink(missing_ok=True)

    def write_cert(self, cert_id: str, cert: x509.Certificate) -> None:
        write_atomic(
            self.certs / f"{cert_id}.crt.pem", cert.public_bytes(serialization.Encoding.PEM), CERT_MODE
        )

    def read_cert(self, cert_id: str) -> x509.Certificate:
        path = self.certs / f"{cert_id}.crt.pem"
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as err:
            raise CaStateError(f"cannot read CA certificate {path}: {err}") from err

    def delete_cert(self, cert_id: str) -> None:
        (self.certs / f"{cert_id}.crt.pem").unlink(missing_ok=True)
