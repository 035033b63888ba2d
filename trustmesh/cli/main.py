"""Entry point of the `trustmesh` command.

Each command group lives in its own module exposing `register(subparsers)`; the
parsers it adds set `func`, a callable taking the parsed args and returning an
exit code. Errors reach the user as one line on stderr (a traceback only with
`--debug`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from trustmesh import __version__
from trustmesh.cli.errors import CliError, innermost

# Command-group modules under trustmesh.cli, in the order `--help` lists them.
GROUPS = (
    "ca",
    "token",
    "bundle",
    "control_plane",
    "sidecar",
    "wait_ready",
    "policy",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trustmesh",
        description="trustmesh: a zero-trust service mesh (SPIFFE identities, mTLS sidecars, policy in git).",
    )
    parser.add_argument("--version", action="version", version=f"trustmesh {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        try:
            module = importlib.import_module(f"trustmesh.cli.{name}")
        except ModuleNotFoundError as exc:  # a group not written yet in this checkout
            if exc.name == f"trustmesh.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[Any], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except BaseException as raised:
        exc = innermost(raised)
        if args.debug and not isinstance(exc, SystemExit):
            raise
        if isinstance(exc, CliError):
            print(f"trustmesh: error: {_one_line(exc.message)}", file=sys.stderr)
            return exc.code
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if isinstance(exc, SystemExit):
            raise exc from None
        if not isinstance(exc, Exception):
            raise
        # A bug, not a user error: still one line unless --debug.
        print(
            f"trustmesh: internal error: {type(exc).__name__}: {_one_line(str(exc))} (rerun with --debug)",
            file=sys.stderr,
        )
        return 70


def _one_line(text: str) -> str:
    """Messages from libraries (libpq, OpenSSL) can span lines; an error is one line on stderr."""
    return " ".join(text.split())

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
