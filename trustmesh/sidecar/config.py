"""The sidecar's typed configuration, parsed once at the edge (CLI flags) and passed down.

Flag syntax (a contract, see `trustmesh sidecar --help`):
  --inbound  LISTEN=APP[,tcp]        mTLS in on LISTEN, plain to the local app at APP
  --outbound SERVICE=LISTEN[,tcp]    the local app calls SERVICE in plain text at LISTEN
  --endpoints SERVICE=HOST:PORT@SPIFFE_ID   static endpoint of SERVICE (repeatable)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal, NamedTuple

from trustmesh.identity.spiffe_id import SpiffeId

Protocol = Literal["http", "tcp"]


class HostPort(NamedTuple):
    """A host and port. A named tuple, not a dataclass: it keys the pool, balancer and
    outlier maps, so it is hashed several times per request, and a tuple's hash is C."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """`127.0.0.1:80`, `[::1]:80` or `localhost:80`; ValueError with the input otherwise."""
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]:")
        else:
            host, sep, rest = text.rpartition(":")
        if not sep or not host or not rest.isdigit() or not 0 <= int(rest) <= 65535:
            raise ValueError(f"invalid address {text!r}: expected HOST:PORT")
        return cls(host, int(rest))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _split_proto(text: str) -> tuple[str, Protocol]:
    base, _, proto = text.partition(",")
    if proto in ("", "http"):
        return base, "http"
    if proto == "tcp":
        return base, "tcp"
    raise ValueError(f"unknown protocol {proto!r} in {text!r}: expected http or tcp")


@dataclass(frozen=True)
class InboundConfig:
    listen: HostPort
    app: HostPort
    protocol: Protocol = "http"

    @classmethod
    def parse(cls, text: str) -> InboundConfig:
        body, proto = _split_proto(text)
        listen, sep, app = body.partition("=")
        if not sep:
            raise ValueError(f"invalid --inbound {text!r}: expected LISTEN=APP[,tcp]")
        return cls(HostPort.parse(listen), HostPort.parse(app), proto)


@dataclass(frozen=True)
class OutboundConfig:
    service: str
    listen: HostPort
    protocol: Protocol = "http"

    @classmethod
    def parse(cls, text: str) -> OutboundConfig:
        body, proto = _split_proto(text)
        service, sep, listen = body.partition("=")
        if not sep or not service:
            raise ValueError(f"invalid --outbound {text!r}: expected SERVICE=LISTEN[,tcp]")
        return cls(service, HostPort.parse(listen), proto)


@dataclass(frozen=True)
class StaticEndpoint:
    service: str
    address: HostPort
    spiffe_id: SpiffeId

    @classmethod
    def parse(cls, text: str) -> StaticEndpoint:
        service, sep, rest = text.partition("=")
        addr, sep2, sid = rest.partition("@")
        if not sep or not sep2 or not service:
            raise ValueError(f"invalid --endpoints {text!r}: expected SERVICE=HOST:PORT@SPIFFE_ID")
        return cls(service, HostPort.parse(addr), SpiffeId.parse(sid))

    # Named in every request's record (access log, metrics labels): made once, not per request.
    @cached_property
    def address_text(self) -> str:
        return str(self.address)

    @cached_property
    def spiffe_id_text(self) -> str:
        return str(self.spiffe_id)


@dataclass(frozen=True)
class Limits:
    """Inbound abuse limits; each breach is answered clearly and logged as one event."""

    max_head_bytes: int = 64 * 1024  # request head larger than this -> 431
    head_timeout: timedelta = timedelta(seconds=10)  # head not complete in time (slowloris) -> 408
    # A request body that sends nothing for this long (a trickled body holds a connection
    # and the app's worker) -> 408, both connections closed. nginx's client_body_timeout.
    body_timeout: timedelta = timedelta(seconds=60)
    idle_timeout: timedelta = timedelta(seconds=60)  # keep-alive connection with no request
    max_connections: int = 10_000  # concurrent inbound connections per listener
    drain_timeout: timedelta = timedelta(seconds=15)  # SIGTERM: in-flight requests get this long
    connect_timeout: timedelta = timedelta(seconds=1)


@dataclass(frozen=True)
class SidecarConfig:
    control_planes: tuple[str, ...]
    join_token: str | None
    data_dir: Path
    inbounds: tuple[InboundConfig, ...] = ()
    outbounds: tuple[OutboundConfig, ...] = ()
    endpoints: tuple[StaticEndpoint, ...] = ()
    admin: HostPort | None = None
    limits: Limits = field(default_factory=Limits)
    policy_dir: Path | None = None
    # Addresses registered as this workload's endpoints (default: the inbound listen addresses).
    advertise: tuple[HostPort, ...] = ()
    # How often the sidecar asks its policy source for a new revision (policy_follower's default).
    policy_poll: timedelta = timedelta(seconds=5)
    # Longest wait between join/renewal retries (full-jitter exponential backoff up to it).
    renew_backoff_max: timedelta = timedelta(seconds=30)
