"""`trustmesh bundle`: print the trust bundle (PEM roots or SPIFFE bundle JSON)."""

from __future__ import annotations

import argparse
import sys

from trustmesh.cli._common import add_state_dir, load_ca, quiet_logging


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("bundle", help="print the trust bundle")
    add_state_dir(parser)
    parser.add_argument(
        "--format",
        choices=("pem", "spiffe"),
        default="pem",
        help="pem: X.509 roots; spiffe: the SPIFFE bundle (JWKS) with X.509 and JWT authorities",
    )
    parser.set_defaults(func=_bundle)


def _bundle(args: argparse.Namespace) -> int:
    quiet_logging()
    bundle = load_ca(args.state_dir).bundle()
    if args.format == "pem":
        sys.stdout.write(bundle.to_pem().decode("ascii"))
    else:
        print(bundle.to_spiffe_json())
    return 0
