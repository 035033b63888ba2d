"""Callers that must never reach the app: no certificate, foreign CA, plain HTTP, forged leaves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.ca.forge import forge_leaf, intermediate_of
from tests.sidecar_proxy.harness import (
    WEB,
    Pki,
    StaticIdentity,
    bare_client_context,
    inbound_running,
    key_to_pem,
    make_pki,
    pem,
    raw_exchange,
)

REQUEST = b"GET /secret HTTP/1.1\r\nhost: api\r\n\r\n"


async def test_client_without_certificate_never_reaches_app(pki: Pki, api: StaticIdentity) -> None:
    async with inbound_running(api) as inbound:
        got = await raw_exchange(inbound.port, REQUEST, bare_client_context(pki.roots_pem))
        assert b"HTTP/1.1" not in got
        assert inbound.app.connections == 0


async def test_foreign_ca_naming_a_valid_id_of_our_trust_domain_never_reaches_app(
    pki: Pki, api: StaticIdentity, tmp_path: Path
) -> None:
    foreign = make_pki(tmp_path)  # same trust domain name, different root
    chain_pem, key_pem = foreign.issue(WEB)
    async with inbound_running(api) as inbound:
        got = await raw_exchange(
            inbound.port, REQUEST, bare_client_context(pki.roots_pem, chain_pem, key_pem)
        )
        assert b"HTTP/1.1" not in got
        assert inbound.app.connections == 0


async def test_plain_http_never_reaches_app(api: StaticIdentity) -> None:
    async with inbound_running(api) as inbound:
        got = await raw_exchange(inbound.port, REQUEST)
        assert b"HTTP/1.1 200" not in got
        assert inbound.app.connections == 0


FORGERIES = {
    "leaf_is_ca": {"ca": True},
    "two_uri_sans": {
        "uris": ("spiffe://example.org/ns/default/sa/web", "spiffe://example.org/ns/default/sa/api")
    },
    "key_cert_sign": {"key_cert_sign": True},
    "other_trust_domain": {"uris": ("spiffe://evil.org/ns/default/sa/web",)},
}


@pytest.mark.parametrize("flaw", sorted(FORGERIES))
async def test_forged_leaf_signed_by_our_ca_is_refused_before_any_byte(
    pki: Pki, api: StaticIdentity, flaw: str
) -> None:
    now = datetime.now(UTC)
    chain, key = forge_leaf(
        intermediate_of(pki.state_dir),
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=1),
        **FORGERIES[flaw],  # type: ignore[arg-type]
    )
    context = bare_client_context(pki.roots_pem, b"".join(pem(c) for c in chain), key_to_pem(key))
    async with inbound_running(api) as inbound:
        got = await raw_exchange(inbound.port, REQUEST, context)
        assert b"HTTP/1.1" not in got
        assert inbound.app.connections == 0
        assert inbound.app.raw_bytes == 0
        # refused by the sidecar's own SVID check, not by OpenSSL
        assert inbound.counters.peers_refused == 1
