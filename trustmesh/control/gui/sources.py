"""Where the GUI's data comes from: one object handed to every page, so pages never reach into
the control plane themselves.

`ObservedTraceStore` is the OTLP receiver's `TraceStore` that also feeds `MeshObservations` on
every batch, so one POST to `/v1/traces` updates both the trace list and the topology.

`EndpointSource` is the seam for the configuration stream's registry (issue 5): until it exists the
workloads page shows no endpoint, and the control plane passes `NoEndpoints()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from trustmesh.clock import Clock
from trustmesh.control.gui.observations import MeshObservations
from trustmesh.policy.watcher import PolicyWatcher
from trustmesh.store import Store
from trustmesh.tracing.otlp_receiver import StoredSpan, TraceStore

__all__ = ["EndpointSource", "GuiSources", "NoEndpoints", "ObservedTraceStore"]


class EndpointSource(Protocol):
    """The advertised inbound addresses of a workload (`host:port`), from the stream's registry."""

    def endpoints_of(self, spiffe_id: str) -> Sequence[str]: ...


class NoEndpoints:
    """Until sidecars register over the stream (issue 5), the control plane knows no endpoints."""

    def endpoints_of(self, spiffe_id: str) -> Sequence[str]:
        return ()


class ObservedTraceStore(TraceStore):
    """A `TraceStore` whose `add` also counts the spans in `observations`."""

    def __init__(self, observations: MeshObservations, clock: Clock, **limits: int) -> None:
        super().__init__(**limits)
        self.observations = observations
        self._clock = clock

    def add(self, spans: list[StoredSpan]) -> None:
        super().add(spans)
        self.observations.ingest(spans, _unix_ns(self._clock))


def _unix_ns(clock: Clock) -> int:
    return int(clock.now().timestamp() * 1e9)


@dataclass
class GuiSources:
    """Everything the pages read. `policy` is None when the control plane follows no policy source."""

    store: Store
    clock: Clock
    trust_domain: str
    policy: PolicyWatcher | None = None
    endpoints: EndpointSource = field(default_factory=NoEndpoints)
    observations: MeshObservations = field(default_factory=MeshObservations)
    traces: ObservedTraceStore = field(init=False)

    def __post_init__(self) -> None:
        self.traces = ObservedTraceStore(self.observations, self.clock)

    def now_ns(self) -> int:
        return _unix_ns(self.clock)

    async def registrations(self) -> dict[str, str]:
        """SPIFFE ID -> service, from the store (written when a join token is created)."""
        return {r.spiffe_id: r.service for r in await self.store.list_registrations()}
