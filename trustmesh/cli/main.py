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

# Command-group modules under trustmesh.cli, in the order `--help` lists them, by the
# command word that selects each.
GROUPS = {
    "ca": "ca",
    "token": "token",
    "bundle": "bundle",
    "control-plane": "control_plane",
    "sidecar": "sidecar",
    "wait-ready": "wait_ready",
    "policy": "policy",
    "demo": "demo",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that command group is imported and registered.

    Importing every group pulls in the control plane's HTTP stack, the GUI and more: a
    sidecar would carry megabytes it never uses, so a command imports only its own group.
    """
    parser = argparse.ArgumentParser(
        prog="trustmesh",
        description="trustmesh: a zero-trust service mesh (SPIFFE identities, mTLS sidecars, policy in git).",
    )
    parser.add_argument("--version", action="version", version=f"trustmesh {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for word, name in GROUPS.items():
        if only is not None and word != only:
            continue
        importlib.import_module(f"trustmesh.cli.{name}").register(sub)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The command the arguments name, if it is a known one (else the full parser decides)."""
    for arg in argv:
        if arg.startswith("-"):
            continue
        return arg if arg in GROUPS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_word(argv))
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
        # Imported here: `trustmesh.store` brings the database drivers, which a sidecar never needs.
        from trustmesh.store.base import StoreUnavailable

        if isinstance(exc, StoreUnavailable | OSError):
            # Disk full, read-only or missing files, database down: the user's to fix, not a bug.
            print(f"trustmesh: error: {_one_line(_describe(exc))}", file=sys.stderr)
            return 1
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def _one_line(text: str) -> str:
    """Messages from libraries (libpq, OpenSSL) can span lines; an error is one line on stderr."""
    return " ".join(text.split())

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
