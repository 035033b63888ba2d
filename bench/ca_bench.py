"""CA benchmark: X.509-SVIDs issued per second, in process and over HTTPS `/v1/renew`.

- in process: `check_csr` (parse, verify the CSR signature, check the key) plus
  `sign_x509_svid` (build and sign the SVID), one thread, CSRs made beforehand (a
  workload makes its own key, so key generation is not the CA's cost);
- over HTTPS: `/v1/renew` on one kept-alive mutual-TLS connection on loopback, one
  request at a time, against the real control plane in a subprocess (all of it: TLS,
  HTTP, JSON, SVID validation of the caller, CSR check, signing, the audit INSERT and
  the log event). The client's own work (httpx, JSON) is included in the figure;
- `openssl speed ecdsap256`, the physical limit of the signature math on this machine.

Each figure is the best of `ROUNDS` rounds (every round is printed too), as the sidecar's
throughput figures are: on a shared machine other work only ever makes a round slower.

Run: `python -m bench.ca_bench [--quick]`; stdout is the markdown section for
docs/benchmarks.md (written by `make bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustmesh.ca import CertificateAuthority, check_csr
from trustmesh.clock import SystemClock
from trustmesh.control.issuer import Issuer
from trustmesh.control.join_client import client_context, join
from trustmesh.identity import SpiffeId
from trustmesh.store import open_store
from trustmesh.tracing.logs import configure_logging

TARGET_IN_PROCESS = 2500
TARGET_RENEW = 500
WORKLOAD = "spiffe://bench.example/ns/bench/sa/client"
ROUNDS = 3


def _csr_pems(n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        out.append(csr.public_bytes(serialization.Encoding.PEM))
    return out


def bench_in_process(state_dir: Path, seconds: float) -> tuple[float, float, int]:
    """One round: (wall-clock rate, rate per CPU-second of this process, samples)."""
    ca = CertificateAuthority.load(state_dir, clock=SystemClock())
    spiffe_id = SpiffeId.parse(WORKLOAD)
    pems = _csr_pems(256)
    for pem in pems[:20]:  # warm up
        ca.sign_x509_svid(check_csr(pem), spiffe_id)
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for pem in pems[:64]:
            ca.sign_x509_svid(check_csr(pem), spiffe_id)
        n += 64
        pems.append(pems.pop(0))
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0), n


def _cpu_seconds(pid: int) -> float:
    """User+system CPU time of another process (Linux /proc), to cost the server alone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def renew_client(address: str, state_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A workload freshly joined with a token of this CA: httpx on one kept-alive mTLS connection."""
    ca = CertificateAuthority.load(state_dir, clock=SystemClock())
    store = await open_store(state_dir)
    try:
        token = await Issuer(ca, store, SystemClock()).create_token(SpiffeId.parse(WORKLOAD), "bench")
    finally:
        await store.aclose()
    svid = await join(address, token)
    async with httpx.AsyncClient(
        base_url=f"https://{address}",
        verify=client_context(svid.bundle_pem, svid),
        limits=httpx.Limits(max_connections=1),
        timeout=30,
    ) as client:
        yield client


Rate = tuple[float, float, int]  # (wall-clock rate, rate per CPU-second of the control plane, samples)


async def _renew_loop(address: str, state_dir: Path, seconds: float, pid: int) -> Rate:
    """`/v1/renew` one at a time on one kept-alive mTLS connection."""
    return (await _renew_and_floor(address, state_dir, seconds, pid, floor_seconds=0.0))[0]


async def _renew_and_floor(
    address: str, state_dir: Path, seconds: float, pid: int, *, floor_seconds: float
) -> tuple[Rate, Rate | None]:
    """Renewals, then (if floor_seconds) `GET /healthz` on the same connection: the HTTP stack's own cost."""
    bodies = [json.dumps({"csr": pem.decode()}).encode() for pem in _csr_pems(256)]
    headers = {"content-type": "application/json"}
    async with renew_client(address, state_dir) as client:
        for body in bodies[:20]:  # warm up (and open the one connection)
            (await client.post("/v1/renew", content=body, headers=headers)).raise_for_status()

        async def renew(n: int) -> httpx.Response:
            return await client.post("/v1/renew", content=bodies[n % len(bodies)], headers=headers)

        async def healthz(n: int) -> httpx.Response:
            return await client.get("/healthz")

        renewals = await _timed(renew, seconds, pid)
        floor = await _timed(healthz, floor_seconds, pid) if floor_seconds else None
        return renewals, floor


async def _timed(request: Callable[[int], Awaitable[httpx.Response]], seconds: float, pid: int) -> Rate:
    n = 0
    t0, server0 = time.perf_counter(), _cpu_seconds(pid)
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        r = await request(n)
        if r.status_code != 200:
            raise RuntimeError(f"{r.request.url.path} failed: {r.status_code} {r.text}")
        n += 1
    server_cpu = max(_cpu_seconds(pid) - server0, 1e-9)
    return n / (time.perf_counter() - t0), n / server_cpu, n


def bench_renew(state_dir: Path, seconds: float, rounds: int) -> list[tuple[Rate, Rate | None]]:
    """`rounds` rounds against one control plane, each on a fresh connection: renewals, then the floor."""
    cmd = [sys.executable, "-m", "trustmesh.cli.main", "control-plane", "--state-dir", str(state_dir),
           "--listen", "127.0.0.1:0", "--log-level", "warning"]  # fmt: skip
    # Readiness comes from the ready event, so keep it: info level for startup only
    # would need a second flag; instead poll the log file for the bound address.
    log_path = state_dir.parent / "control-plane.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*cmd[:-1], "info"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        address = ""
        for _ in range(300):  # up to 30 s
            for line in log_path.read_text().splitlines():
                if '"control_plane_ready"' in line:
                    address = json.loads(line)["listen"]
            if address or proc.poll() is not None:
                break
            time.sleep(0.1)
        if not address:
            raise RuntimeError(f"control plane did not start: {log_path.read_text()[-2000:]}")
        one_round = partial(_renew_and_floor, floor_seconds=seconds / 2)
        return [trio.run(one_round, address, state_dir, seconds, proc.pid) for _ in range(rounds)]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def openssl_speed(seconds: int) -> str:
    if shutil.which("openssl") is None:
        return "openssl not installed"
    done = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "ecdsap256"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = [
        ln.strip() for ln in done.stdout.splitlines() if "nistp256" in ln or ln.strip().startswith("sign")
    ]
    return "\n".join(lines) or done.stdout.strip()[-500:]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 5.0
    configure_logging(level="warning")
    with tempfile.TemporaryDirectory(prefix="trustmesh-ca-bench-") as tmp:
        state = Path(tmp) / "state"
        CertificateAuthority.init(state, "bench.example", clock=SystemClock())
        rounds = 1 if args.quick else ROUNDS
        in_rounds = [bench_in_process(state, seconds) for _ in range(rounds)]
        renew_rounds = bench_renew(state, seconds, rounds)
    in_rate, in_cpu_rate, in_n = max(in_rounds, key=lambda r: r[1])
    (renew_rate, renew_cpu_rate, renew_n), floor = max(renew_rounds, key=lambda r: r[0][1])
    speed_seconds = 1 if args.quick else 3
    speed = openssl_speed(speed_seconds)
    verdict = {True: "met", False: "**missed**"}
    quick = " --quick" if args.quick else ""
    print("## CA: SVID issuance\n")
    load = os.getloadavg()[0]
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {load:.1f} at the end. Command: `python -m bench.ca_bench{quick}`.\n")  # fmt: skip
    print("Per CPU-second is what one fully available core gives (this process's CPU time; for renew,")
    print("the control plane's). Wall-clock is what this run saw on a shared machine.\n")
    print("| what | SVIDs/s wall-clock | SVIDs per CPU-second | samples | target (one core) | |")
    print("|---|---:|---:|---:|---:|---|")
    rows = [
        ("in process: check_csr + sign_x509_svid", in_rate, in_cpu_rate, in_n, TARGET_IN_PROCESS),
        (
            "HTTPS `/v1/renew`, one kept-alive mTLS connection",
            renew_rate,
            renew_cpu_rate,
            renew_n,
            TARGET_RENEW,
        ),
    ]
    for what, wall, cpu, n, target in rows:
        print(f"| {what} | {wall:,.0f} | {cpu:,.0f} | {n:,} | {target:,} | {verdict[cpu >= target]} |")
    print(
        f"\nBest of {rounds} round(s) of {seconds:g} s each. Every round, per CPU-second: in process "
        f"{', '.join(f'{r[1]:,.0f}' for r in in_rounds)}; `/v1/renew` "
        f"{', '.join(f'{r[0][1]:,.0f}' for r in renew_rounds)}."
    )
    if floor is not None:
        print(
            "\nFor scale, on the same connection right after: `GET /healthz`, the HTTP stack (TLS,"
            " hypercorn, h11, Starlette, trio) with no work behind it,"
            f" {floor[1]:,.0f} per control-plane CPU-second ({1e6 / floor[1]:,.0f} µs each,"
            f" {floor[2]:,} samples), against {1e6 / renew_cpu_rate:,.0f} µs"
            " per renewal. A renewal cannot cost less than that plus its CSR check and signature."
        )
    print(
        f"\nPhysical limit, `openssl speed -seconds {speed_seconds} ecdsap256`"
        " (sign/s and verify/s, last two columns):\n"
    )
    print(f"```\n{speed}\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
