"""Inputs the join/renew fuzzing found, kept as plain regression tests (the first four were 500s)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from trustmesh.ca import CertificateAuthority
from trustmesh.clock import ManualClock
from trustmesh.control.testing import start_control_plane

API_ID = "spiffe://example.org/ns/default/sa/api"

FOUND = {
    # json.loads raised RecursionError (not a ValueError): 500 "internal".
    "nested arrays": b"[" * 5000,
    "nested objects": b'{"a":' * 5000,
    # json.loads(bytes) decodes with "surrogatepass": an encoded lone surrogate inside the
    # CSR reached check_csr's .encode("utf-8") and raised UnicodeEncodeError: 500.
    "utf-8 encoded surrogate in csr": (
        b'{"token": "TOKEN", "csr": "-----BEGIN CERTIFICATE REQUEST-----\\n\xed\xa0\x80MIH"}'
    ),
    # The same through a JSON escape.
    "escaped surrogate in csr": (
        b'{"token": "TOKEN", "csr": "-----BEGIN CERTIFICATE REQUEST-----\\n\\ud800MIH"}'
    ),
    # Refused at the same boundary now, wherever the surrogate is.
    "escaped surrogate in key": b'{"token": "TOKEN", "csr": "x", "\\udfff": 1}',
}


@pytest.mark.parametrize("case", sorted(FOUND))
async def test_found_by_fuzzing_is_a_400_invalid_json(
    case: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    clock = ManualClock(current=datetime.now(UTC).replace(microsecond=0))
    CertificateAuthority.init(tmp_path / "state", "example.org", clock=clock)
    harness = await start_control_plane(nursery, tmp_path / "state", clock)
    token = await harness.token(API_ID)
    before = await harness.snapshot()
    try:
        async with harness.client() as client:
            with trio.fail_after(30):
                r = await client.post("/v1/join", content=FOUND[case].replace(b"TOKEN", token.encode()))
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_json" and r.json()["detail"]
        assert await harness.snapshot() == before
    finally:
        harness.cp.stop()


async def test_a_chunked_body_over_the_limit_gets_its_413(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Found by fuzzing: `{"csr":[` x 16385 (128 KiB), chunked, saw a dropped connection."""
    clock = ManualClock(current=datetime.now(UTC).replace(microsecond=0))
    CertificateAuthority.init(tmp_path / "state", "example.org", clock=clock)
    harness = await start_control_plane(nursery, tmp_path / "state", clock)
    body = b'{"csr":[' * 16385

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    try:
        async with harness.client() as client:
            for _ in range(5):  # a reset is a race: try it more than once
                with trio.fail_after(30):
                    r = await client.post("/v1/join", content=pieces())
                assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    finally:
        harness.cp.stop()


async def test_a_sized_body_over_the_limit_gets_its_413(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Found by the longer fuzz run: 246 KB with Content-Length, answered before it was read."""
    clock = ManualClock(current=datetime.now(UTC).replace(microsecond=0))
    CertificateAuthority.init(tmp_path / "state", "example.org", clock=clock)
    harness = await start_control_plane(nursery, tmp_path / "state", clock)
    try:
        async with harness.client() as client:
            for _ in range(5):  # a reset is a race: try it more than once
                with trio.fail_after(30):
                    r = await client.post("/v1/join", content=b'{"csr":[' * 30805)
                assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    finally:
        harness.cp.stop()
