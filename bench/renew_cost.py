"""Where a `/v1/renew` spends the control plane's CPU: the HTTP stack, the handler, the cryptography.

    .venv/bin/python -m bench.renew_cost [seconds]

Over HTTPS (a control plane subprocess, one kept-alive mTLS connection, one request at a
time), control-plane CPU time per request for:
- `GET /healthz`: the HTTP stack (TLS, hypercorn, h11, Starlette, trio) with nothing behind it;
- `POST /v1/renew` with a malformed CSR: the body read, JSON, a 400 answer;
- `POST /v1/renew`: a renewal.
In this process, without HTTP: the Starlette app called directly with the same renew body
(handler, CSR check, signature, audit row, log event, JSON), and `check_csr` +
`sign_x509_svid` alone. Each figure is the median of `rounds` alternating rounds; compare
them with each other, not across runs (this machine's speed drifts by a quarter).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio
from cryptography import x509

from bench.ca_bench import WORKLOAD, _cpu_seconds, _csr_pems, renew_client
from bench.renew_ab import _start
from trustmesh.ca import CertificateAuthority, check_csr
from trustmesh.clock import SystemClock
from trustmesh.control.app import PEER_CHAIN, build_app
from trustmesh.control.issuer import Issuer
from trustmesh.identity import SpiffeId
from trustmesh.store import open_store
from trustmesh.tracing.logs import configure_logging

REPO = Path(__file__).resolve().parent.parent


async def _over_https(address: str, state: Path, pid: int, seconds: float, rounds: int) -> dict[str, float]:
    good = [json.dumps({"csr": pem.decode()}).encode() for pem in _csr_pems(64)]
    bad = json.dumps({"csr": "x" * 500}).encode()
    headers = {"content-type": "application/json"}
    async with renew_client(address, state) as client:
        kinds: dict[str, Callable[[int], Awaitable[httpx.Response]]] = {
            "GET /healthz": lambda n: client.get("/healthz"),
            "POST /v1/renew, malformed CSR (400)": lambda n: client.post(
                "/v1/renew", content=bad, headers=headers
            ),
            "POST /v1/renew": lambda n: client.post("/v1/renew", content=good[n % 64], headers=headers),
        }
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(rounds):
            for name, request in kinds.items():
                for n in range(10):  # warm up this kind
                    await request(n)
                count, cpu0, deadline = 0, _cpu_seconds(pid), time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    await request(count)
                    count += 1
                samples[name].append((_cpu_seconds(pid) - cpu0) / count * 1e6)
        return {k: statistics.median(v) for k, v in samples.items()}


async def _in_process(seconds: float, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="trustmesh-renew-cost-") as tmp:
        ca = CertificateAuthority.init(Path(tmp) / "state", "bench.example", clock=SystemClock())
        store = await open_store(Path(tmp) / "state")
        try:
            app = build_app(Issuer(ca, store, SystemClock()))
            pems = _csr_pems(64)
            spiffe_id = SpiffeId.parse(WORKLOAD)
            issued = ca.sign_x509_svid(check_csr(pems[0]), spiffe_id)
            PEER_CHAIN.set(tuple(x509.load_pem_x509_certificates(issued.chain_pem())))
            bodies = [json.dumps({"csr": pem.decode()}).encode() for pem in pems]

            async def handler(n: int) -> None:
                body = bodies[n % 64]

                async def receive() -> dict[str, Any]:
                    return {"type": "http.request", "body": body, "more_body": False}

                async def send(message: dict[str, Any]) -> None:
                    if message["type"] == "http.response.start" and message["status"] != 200:
                        raise RuntimeError(f"renew answered {message['status']}")

                scope = {
                    "type": "http", "asgi": {"version": "3.0", "spec_version": "2.1"},
                    "http_version": "1.1", "method": "POST", "scheme": "https", "path": "/v1/renew",
                    "raw_path": b"/v1/renew", "query_string": b"", "root_path": "",
                    "headers": [(b"host", b"cp"), (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())],
                    "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
                }  # fmt: skip
                await app(scope, receive, send)

            async def sign(n: int) -> None:
                ca.sign_x509_svid(check_csr(pems[n % 64]), spiffe_id)

            kinds = {"handler in process (no HTTP)": handler, "check_csr + sign_x509_svid": sign}
            samples: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(rounds):
                for name, call in kinds.items():
                    count, cpu0, deadline = 0, time.process_time(), time.perf_counter() + seconds
                    while time.perf_counter() < deadline:
                        await call(count)
                        count += 1
                    samples[name].append((time.process_time() - cpu0) / count * 1e6)
            return {k: statistics.median(v) for k, v in samples.items()}
        finally:
            await store.aclose()


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    rounds = 3
    # The in-process handler logs at info, as the control plane does.
    configure_logging(level="info", fmt="json", stream=open(os.devnull, "w"))  # noqa: SIM115
    in_process = trio.run(_in_process, seconds, rounds)
    configure_logging(level="warning")
    with tempfile.TemporaryDirectory(prefix="trustmesh-renew-cost-") as tmp:
        proc, address, state = _start(REPO, Path(tmp))
        try:
            https = trio.run(_over_https, address, state, proc.pid, seconds, rounds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    print(f"control-plane CPU per request, median of {rounds} rounds of {seconds:g} s (`bench.renew_cost`):")
    for name, us in {**https, **in_process}.items():
        print(f"  {name:40s} {us:7,.0f} µs")


if __name__ == "__main__":
    main()
