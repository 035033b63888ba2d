"""`trustmesh ca init|fingerprint|rotate-root`: create and look after the identity CA."""

from __future__ import annotations

import argparse

import trio

from trustmesh.ca import (
    DEFAULT_INTERMEDIATE_TTL,
    DEFAULT_ROOT_OVERLAP,
    DEFAULT_ROOT_TTL,
    CaAlreadyInitialised,
    CaError,
    CertificateAuthority,
)
from trustmesh.cli._common import add_state_dir, duration_flag, load_ca, open_cli_store, quiet_logging
from trustmesh.cli.errors import CliError
from trustmesh.clock import SystemClock
from trustmesh.control.issuer import record_ca_keys
from trustmesh.durations import format_duration


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = subparsers.add_parser("ca", help="create and manage the identity CA")
    sub = ca.add_subparsers(dest="ca_command", metavar="SUBCOMMAND", required=True)

    init = sub.add_parser("init", help="create a root and an intermediate CA in a new state dir")
    init.add_argument("--trust-domain", required=True, help="e.g. example.org")
    add_state_dir(init)
    init.add_argument(
        "--root-ttl",
        default=format_duration(DEFAULT_ROOT_TTL),
        help=f"root lifetime (default {format_duration(DEFAULT_ROOT_TTL)})",
    )
    init.add_argument(
        "--intermediate-ttl",
        default=format_duration(DEFAULT_INTERMEDIATE_TTL),
        help="intermediate lifetime, renewed at half-life"
        f" (default {format_duration(DEFAULT_INTERMEDIATE_TTL)})",
    )
    init.set_defaults(func=_init)

    fp = sub.add_parser("fingerprint", help="print sha256:<hex> of the root's SubjectPublicKeyInfo")
    add_state_dir(fp)
    fp.set_defaults(func=_fingerprint)

    rotate = sub.add_parser("rotate-root", help="publish a new root now, sign with it after --overlap")
    add_state_dir(rotate)
    rotate.add_argument(
        "--overlap",
        default=format_duration(DEFAULT_ROOT_OVERLAP),
        help=f"new root trusted this long before it signs (default {format_duration(DEFAULT_ROOT_OVERLAP)})",
    )
    rotate.set_defaults(func=_rotate_root)


def _init(args: argparse.Namespace) -> int:
    quiet_logging()
    try:
        ca = CertificateAuthority.init(
            args.state_dir,
            args.trust_domain,
            root_ttl=duration_flag(args.root_ttl, "--root-ttl"),
            intermediate_ttl=duration_flag(args.intermediate_ttl, "--intermediate-ttl"),
            clock=SystemClock(),
        )
    except CaAlreadyInitialised as exc:
        raise CliError(str(exc)) from exc
    except ValueError as exc:  # bad trust domain or lifetimes
        raise CliError(str(exc)) from exc
    trio.run(_record_keys, ca, args)
    print(f"initialised CA for trust domain {ca.trust_domain} in {args.state_dir}")
    print(f"fingerprint: {ca.fingerprint()}")
    return 0


async def _record_keys(ca: CertificateAuthority, args: argparse.Namespace) -> None:
    store = await open_cli_store(args)
    try:
        await record_ca_keys(store, ca, SystemClock().now())
    finally:
        await store.aclose()


def _fingerprint(args: argparse.Namespace) -> int:
    quiet_logging()
    print(load_ca(args.state_dir).fingerprint())
    return 0


def _rotate_root(args: argparse.Namespace) -> int:
    quiet_logging()
    ca = load_ca(args.state_dir)
    try:
        rotation = ca.rotate_root(duration_flag(args.overlap, "--overlap"))
    except CaError as exc:
        raise CliError(str(exc)) from exc
    trio.run(_record_keys, ca, args)
    print(
        f"new root {rotation.fingerprint} is in the bundle now;"
        f" it signs from {rotation.activate_at.isoformat()}"
    )
    return 0
