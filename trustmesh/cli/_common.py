"""Small pieces shared by the CA-side command groups (ca, token, bundle, control-plane, demo).

Parsing happens here, once, at the edge: flags become typed values (Path, timedelta,
SpiffeId) or a one-line `CliError`.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from trustmesh.ca import CaStateError, CertificateAuthority
from trustmesh.cli.errors import CliError
from trustmesh.clock import Clock, SystemClock
from trustmesh.durations import parse_duration
from trustmesh.store import PostgresStoreError, Store, open_store
from trustmesh.tracing.logs import configure_logging


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        required=True,
        type=Path,
        metavar="DIR",
        help="the CA's state directory (keys, database)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="database: postgresql://… for control-plane replicas (default: SQLite in the state dir)",
    )


async def open_cli_store(args: argparse.Namespace) -> Store:
    """The store named by --state-dir/--store, or a one-line `CliError` saying why not."""
    try:
        return await open_store(args.state_dir, args.store)
    except (ValueError, PostgresStoreError) as exc:
        raise CliError(f"--store: {exc}") from exc


def duration_flag(text: str, flag: str) -> timedelta:
    """A Go-style duration flag (`30s`, `10m`, `8760h`, `7d`) or a one-line `CliError` naming the flag.

    Parsed in the command rather than as an argparse `type=`, so that a typo gives one
    line on stderr like every other user error, not argparse's usage block.
    """
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from exc
    if value <= timedelta(0):
        raise CliError(f"{flag}: duration {text!r} must be positive")
    return value


def quiet_logging() -> None:
    """Short commands print their result on stdout; logs go to stderr and only when they matter."""
    configure_logging(level="error")


def load_ca(state_dir: Path, clock: Clock | None = None) -> CertificateAuthority:
    if not state_dir.is_dir():
        raise CliError(f"state dir {state_dir} does not exist; run `trustmesh ca init` first")
    try:
        return CertificateAuthority.load(state_dir, clock=clock or SystemClock())
    except CaStateError as exc:
        raise CliError(f"no usable CA in {state_dir}: {exc}") from exc
