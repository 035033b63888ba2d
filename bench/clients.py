"""The two measuring clients that are neither wrk nor the fixed-rate generator.

- `bulk_download`: one large GET through a leg, timed from request to last byte.
- `new_connections`: fresh mTLS handshakes, one request each, against a
  server-side proxy (trustmesh inbound or stunnel server) with the same client
  certificate. "Fresh" means a full TLS 1.3 handshake: Python's `ssl` never resumes
  a session unless it is handed one, so no tickets are reused.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class BulkResult:
    bytes: int
    seconds: float
    complete: bool

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def read_head(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    """Status code and any body bytes that came with the head."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline:
            raise TimeoutError("no response head before the deadline")
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before the response head")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, rest


def bulk_download(host: str, port: int, path: str, expected: int, timeout_s: float) -> BulkResult:
    """GET `path` and read exactly `expected` body bytes, or as many as `timeout_s` allows."""
    start = time.monotonic()
    deadline = start + timeout_s
    buf = bytearray(_CHUNK)
    with socket.create_connection((host, port), timeout=5.0) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".encode())
        status, rest = read_head(sock, deadline)
        if status != 200:
            raise ConnectionError(f"bulk GET answered {status}")
        got = len(rest)
        view = memoryview(buf)
        while got < expected:
            if time.monotonic() > deadline:
                return BulkResult(got, time.monotonic() - start, False)
            n = sock.recv_into(view)
            if n == 0:
                break
            got += n
    return BulkResult(got, time.monotonic() - start, got >= expected)


@dataclass(frozen=True)
class HandshakeResult:
    completed: int
    errors: int
    seconds: float
    first_error: str

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0


def client_context(roots: Path, chain: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.3 client presenting `chain`; the server's chain must lead to `roots`.

    Hostname checks are off because SPIFFE SVIDs name a URI, not a host: both proxies
    under test authenticate by chain, and so does this client.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(str(roots))
    ctx.load_cert_chain(str(chain), str(key))
    return ctx


def new_connections(
    host: str, port: int, ctx: ssl.SSLContext, path: str, *, duration_s: float, threads: int, max_count: int
) -> HandshakeResult:
    """Connections/s where each connection is a fresh mTLS handshake plus one request.

    Threads run in parallel because `ssl` releases the GIL during the handshake. The
    run stops at `duration_s` or `max_count` connections, whichever comes first.
    """
    request = f"GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".encode()
    lock = threading.Lock()
    counts = {"ok": 0, "err": 0}
    first_error: list[str] = []
    start = time.monotonic()
    stop_at = start + duration_s

    def worker() -> None:
        while time.monotonic() < stop_at:
            with lock:
                if counts["ok"] + counts["err"] >= max_count:
                    return
            try:
                with socket.create_connection((host, port), timeout=5.0) as raw, ctx.wrap_socket(raw) as tls:
                    tls.sendall(request)
                    status, _ = read_head(tls, time.monotonic() + 5.0)
                    if status != 200:
                        raise ConnectionError(f"answered {status}")
                ok = True
            except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
                ok = False
                with lock:
                    if not first_error:
                        first_error.append(f"{type(exc).__name__}: {exc}")
            with lock:
                counts["ok" if ok else "err"] += 1

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=duration_s + 15.0)
    elapsed = time.monotonic() - start
    return HandshakeResult(counts["ok"], counts["err"], elapsed, first_error[0] if first_error else "")
