"""The narrow persistence interface of the control plane.

Everything the control plane remembers goes through `Store`, so that SQLite (the
default, one file in the state dir) and a later PostgreSQL backend (for HA) are
interchangeable. The interface speaks in plain records with timezone-aware UTC
datetimes; backends choose their own column types.

The one operation with a real concurrency contract is
`consume_join_token_and_record`: a token is single use, and that must hold even
when fifty joins race for it, so backends implement it as one conditional UPDATE
plus the audit INSERT in a single transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

CaKeyKind = Literal["root", "intermediate"]
EndpointHealth = Literal["healthy", "disconnected"]


@dataclass(frozen=True)
class JoinTokenRecord:
    """A join token as stored: never the secret, only its SHA-256."""

    id: str
    secret_hash: str
    spiffe_id: str
    service: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    used_by_serial: str | None = None

    def state(self, now: datetime) -> str:
        """The state `token list` shows: `unused`, `used by serial X` or `expired`."""
        if self.used_at is not None:
            return f"used by serial {self.used_by_serial}"
        if self.expires_at <= now:
            return "expired"
        return "unused"


@dataclass(frozen=True)
class IssuedSvidRecord:
    """One line of the issuance audit log.

    `serial` is text because X.509 serials are up to 159 bits, more than any SQL integer.
    `auth` says how the caller proved who it was: `join-token:<id>`, `renew:<serial>` or `bootstrap`.
    """

    serial: str
    spiffe_id: str
    not_after: datetime
    issued_at: datetime
    auth: str


@dataclass(frozen=True)
class CaKeyRecord:
    """Metadata about one CA key (never the key): which, since when, until when."""

    fingerprint: str
    kind: CaKeyKind
    not_before: datetime
    not_after: datetime
    created_at: datetime


@dataclass(frozen=True)
class Registration:
    """Which SPIFFE ID a service runs as (recorded when a token is created for it)."""

    service: str
    spiffe_id: str
    created_at: datetime


@dataclass(frozen=True)
class EndpointRecord:
    """One address at which a service is served, as the configuration stream registered it.

    Keyed by (`service`, `address`): a sidecar that reconnects, to any replica, replaces its
    own row instead of adding one. `connection_id` names the stream that registered it and
    `replica_id` the control plane holding that stream, so only that stream's close or
    deregistration removes the row, and only that replica keeps `last_seen` fresh while the
    stream lives. A row whose `last_seen` is older than the grace period is expired by any
    replica: that covers a replica that died with its streams.
    """

    service: str
    address: str
    spiffe_id: str
    health: EndpointHealth
    last_seen: datetime
    connection_id: str
    replica_id: str


class StoreUnavailable(Exception):
    """The store cannot be read or written right now: disk full, read-only, database down.

    Nothing was changed (each operation is one transaction). The API answers 503 and the
    CLI one line, naming the cause, so an operator sees "disk full", not "internal error".
    """


class AlreadyRecorded(Exception):
    """`record_svid` refused a second audit row for a once-only authentication.

    An expired SVID may be recovered once (`auth` = `recover:<serial>`): the store keeps
    that unique across every replica sharing it, so two replicas racing to recover the
    same serial issue one SVID, not two. Nothing was written.
    """


class TokenConsumeFailed(Exception):
    """The conditional consume matched no row: the token is unknown, expired or already used.

    `reason` is the exact cause for the server log (`unknown`, `expired`, `used`);
    callers see only "invalid, expired or already used".
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Store(Protocol):
    """Persistence for tokens, the SVID audit log, CA key metadata and registrations."""

    async def create_join_token(self, record: JoinTokenRecord) -> None: ...

    async def get_join_token(self, token_id: str) -> JoinTokenRecord | None: ...

    async def list_join_tokens(self) -> list[JoinTokenRecord]: ...

    async def consume_join_token_and_record(
        self, token_id: str, secret_hash: str, now: datetime, issued: IssuedSvidRecord
    ) -> None:
        """Mark the token used by `issued.serial` and append `issued` to the audit log, atomically.

        Raises `TokenConsumeFailed` (and changes nothing) unless the token exists, has this
        secret hash, is unused and has not expired at `now`.
        """
        ...

    async def record_svid(self, record: IssuedSvidRecord) -> None:
        """Append an audit row; raises `AlreadyRecorded` for a second `recover:<serial>` row."""
        ...

    async def get_svid(self, serial: str) -> IssuedSvidRecord | None: ...

    async def list_svids(self) -> list[IssuedSvidRecord]: ...

    async def put_ca_key(self, record: CaKeyRecord) -> None:
        """Insert or replace the metadata of the key with this fingerprint."""
        ...

    async def list_ca_keys(self) -> list[CaKeyRecord]: ...

    async def put_registration(self, registration: Registration) -> None:
        """Insert or replace the registration of `registration.service`."""
        ...

    async def list_registrations(self) -> list[Registration]: ...

    # Endpoints of the configuration stream (trustmesh/control/registry.py). Each change
    # method returns the services whose endpoint lists changed, sorted, so the registry
    # knows whom to tell.

    async def put_endpoint(self, record: EndpointRecord) -> None:
        """Insert or replace the endpoint at (`record.service`, `record.address`)."""
        ...

    async def list_endpoints(self, service: str | None = None) -> list[EndpointRecord]:
        """Every endpoint (or those of `service`), ordered by service then address."""
        ...

    async def mark_endpoints_disconnected(self, connection_id: str, now: datetime) -> list[str]:
        """Health `disconnected` and `last_seen = now` for the rows `connection_id` registered."""
        ...

    async def delete_endpoints(self, connection_id: str) -> list[str]:
        """Remove the rows `connection_id` registered (a clean deregistration)."""
        ...

    async def touch_endpoints(self, replica_id: str, now: datetime) -> None:
        """`last_seen = now` for the healthy rows held by `replica_id` (its streams are alive)."""
        ...

    async def expire_endpoints(self, seen_before: datetime) -> list[str]:
        """Remove every row whose `last_seen` is before `seen_before` (the grace period passed)."""
        ...

    async def aclose(self) -> None: ...
