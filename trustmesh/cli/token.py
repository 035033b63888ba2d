"""`trustmesh token create|list`: single-use join tokens for new workloads."""

from __future__ import annotations

import argparse

import trio

from trustmesh.ca.join_token import DEFAULT_JOIN_TOKEN_TTL, JoinToken
from trustmesh.cli._common import add_state_dir, duration_flag, load_ca, open_cli_store, quiet_logging
from trustmesh.cli.errors import CliError
from trustmesh.clock import SystemClock
from trustmesh.control.issuer import Issuer, rfc3339
from trustmesh.durations import format_duration
from trustmesh.identity import SpiffeId
from trustmesh.store import JoinTokenRecord


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = subparsers.add_parser("token", help="create and list join tokens")
    sub = token.add_subparsers(dest="token_command", metavar="SUBCOMMAND", required=True)

    create = sub.add_parser("create", help="print a new single-use join token (one line)")
    add_state_dir(create)
    create.add_argument("--spiffe-id", required=True, help="the identity the joiner gets")
    create.add_argument("--service", required=True, help="the service the identity belongs to")
    create.add_argument(
        "--ttl",
        default=format_duration(DEFAULT_JOIN_TOKEN_TTL),
        help=f"how long the token can be used (default {format_duration(DEFAULT_JOIN_TOKEN_TTL)})",
    )
    create.set_defaults(func=_create)

    listing = sub.add_parser("list", help="list tokens and their state (never the secret)")
    add_state_dir(listing)
    listing.set_defaults(func=_list)


def _create(args: argparse.Namespace) -> int:
    quiet_logging()
    try:
        spiffe_id = SpiffeId.parse(args.spiffe_id)
    except ValueError as exc:
        raise CliError(f"--spiffe-id: {exc}") from exc
    if not args.service.strip():
        raise CliError("--service must not be empty")
    ttl = duration_flag(args.ttl, "--ttl")
    ca = load_ca(args.state_dir)

    async def create() -> JoinToken:
        store = await open_cli_store(args)
        try:
            return await Issuer(ca, store, SystemClock()).create_token(spiffe_id, args.service, ttl)
        finally:
            await store.aclose()

    try:
        token = trio.run(create)
    except ValueError as exc:  # SPIFFE ID of another trust domain, or without a path
        raise CliError(str(exc)) from exc
    print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    quiet_logging()
    load_ca(args.state_dir)  # a clear error for a dir without a CA, before creating a database

    async def fetch() -> list[JoinTokenRecord]:
        store = await open_cli_store(args)
        try:
            return await store.list_join_tokens()
        finally:
            await store.aclose()

    records = trio.run(fetch)
    now = SystemClock().now()
    rows = [("ID", "SPIFFE ID", "SERVICE", "EXPIRES", "STATE")]
    rows += [(r.id, r.spiffe_id, r.service, rfc3339(r.expires_at), r.state(now)) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 0
