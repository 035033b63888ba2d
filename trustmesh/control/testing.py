"""An in-process control plane for tests (ours and the sidecar's): real HTTPS on loopback.

    harness = await start_control_plane(nursery, state_dir, clock)
    svid = await join(harness.address, await harness.token("spiffe://example.org/ns/x"))

Lives in the package (not in a conftest) so any test folder can import it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import trio

from trustmesh.ca import CertificateAuthority
from trustmesh.clock import ManualClock
from trustmesh.control.join_client import client_context
from trustmesh.control.policy_service import PolicyService
from trustmesh.control.server import ControlPlane
from trustmesh.identity import SpiffeId
from trustmesh.store import Store


@dataclass
class ControlPlaneHarness:
    """A started `ControlPlane` plus the shortcuts tests keep needing."""

    cp: ControlPlane
    clock: ManualClock
    state_dir: Path
    address: str

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    @property
    def ca(self) -> CertificateAuthority:
        assert self.cp.ca is not None
        return self.cp.ca

    @property
    def store(self) -> Store:
        assert self.cp.store is not None
        return self.cp.store

    def verified_context(self) -> ssl.SSLContext:
        """A client context that trusts the current bundle (no client certificate)."""
        return client_context(self.ca.bundle().to_pem())

    def client(self, limits: httpx.Limits | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            verify=self.verified_context(),
            timeout=30,
            limits=limits or httpx.Limits(max_connections=10),
        )

    async def token(
        self, spiffe_id: str, service: str = "api", ttl: timedelta = timedelta(minutes=10)
    ) -> str:
        assert self.cp.issuer is not None
        return str(await self.cp.issuer.create_token(SpiffeId.parse(spiffe_id), service, ttl))

    async def snapshot(self) -> tuple[object, ...]:
        """Everything a request could change, to assert that a failed request changed nothing."""
        return (
            await self.store.list_join_tokens(),
            await self.store.list_svids(),
            await self.store.list_registrations(),
        )


async def start_control_plane(
    nursery: trio.Nursery,
    state_dir: Path,
    clock: ManualClock,
    *,
    svid_ttl: timedelta | None = None,
    policy: PolicyService | None = None,
    keep_alive_timeout: timedelta | None = None,
) -> ControlPlaneHarness:
    """Serve the CA in `state_dir` on 127.0.0.1:<free port> until `harness.cp.stop()` or the nursery ends.

    The rotation loop checks only hourly (by trio's clock); tests drive rotation with
    `harness.cp.rotate_now()` after moving `clock`.
    """
    cp = ControlPlane(
        state_dir,
        host="127.0.0.1",
        port=0,
        clock=clock,
        svid_ttl=svid_ttl,
        rotation_check=timedelta(hours=1),
        policy=policy,
    )
    if keep_alive_timeout is not None:
        cp.keep_alive_timeout = keep_alive_timeout
    address = await nursery.start(cp.run)
    return ControlPlaneHarness(cp, clock, state_dir, address)
