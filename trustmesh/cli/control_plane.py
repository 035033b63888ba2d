"""`trustmesh control-plane`: serve the CA API over HTTPS until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
import trio

from trustmesh.ca import DEFAULT_X509_SVID_TTL
from trustmesh.cli._common import add_state_dir, duration_flag, load_ca
from trustmesh.cli.errors import CliError, innermost
from trustmesh.clock import SystemClock
from trustmesh.control.gui.listener import DEFAULT_GUI_LISTEN, GuiListener, RemoteGuiRefused
from trustmesh.control.issuer import DEFAULT_EXPIRED_RENEW_GRACE
from trustmesh.control.policy_service import DEFAULT_POLICY_POLL, PolicyService
from trustmesh.control.server import ControlPlane, parse_listen
from trustmesh.durations import format_duration, parse_duration
from trustmesh.policy.source import DirSource, GitSource, PolicySourceError
from trustmesh.policy.watcher import PolicyWatcher
from trustmesh.store import PostgresStoreError
from trustmesh.tracing.logs import configure_logging

if TYPE_CHECKING:
    from trustmesh.tracing.setup import Tracing

log = structlog.get_logger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("control-plane", help="serve the CA API (join, renew, bundle, JWT-SVID)")
    add_state_dir(parser)
    parser.add_argument(
        "--listen", default="127.0.0.1:8443", help="host:port (default 127.0.0.1:8443; port 0 = any)"
    )
    parser.add_argument(
        "--svid-ttl",
        default=format_duration(DEFAULT_X509_SVID_TTL),
        help=f"lifetime of issued X.509-SVIDs (default {format_duration(DEFAULT_X509_SVID_TTL)})",
    )
    parser.add_argument(
        "--expired-renew-grace",
        default=format_duration(DEFAULT_EXPIRED_RENEW_GRACE),
        help="how long after expiry an SVID that was never renewed may still be renewed by proving "
        f"possession of its key (default {format_duration(DEFAULT_EXPIRED_RENEW_GRACE)}; 0s turns it off)",
    )
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument(
        "--policy-git", metavar="REPO", help="follow authorization policy committed in this git repository"
    )
    policy.add_argument("--policy-dir", metavar="DIR", help="serve policy from a plain directory instead")
    parser.add_argument("--policy-ref", default="main", help="branch or ref of --policy-git (default main)")
    parser.add_argument(
        "--policy-poll",
        default=format_duration(DEFAULT_POLICY_POLL),
        help=f"how often to look for a new policy revision (default {format_duration(DEFAULT_POLICY_POLL)})",
    )
    parser.add_argument(
        "--gui",
        nargs="?",
        const=DEFAULT_GUI_LISTEN,
        metavar="HOST:PORT",
        help=f"serve the web GUI and an OTLP/HTTP trace receiver (/v1/traces) on plain HTTP "
        f"(--gui alone: {DEFAULT_GUI_LISTEN}); see docs/gui.md",
    )
    parser.add_argument(
        "--gui-allow-remote",
        action="store_true",
        help="allow --gui on a non-loopback address; the GUI has no authentication of its own, "
        "so put an authenticating reverse proxy in front of it",
    )
    parser.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="OTLP/HTTP collector for join/renew/policy spans (or OTEL_EXPORTER_OTLP_ENDPOINT);"
        " tracing is off without one",
    )
    parser.add_argument("--trace-sample-ratio", type=float, metavar="R", help="share of traces sampled, 0..1")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=_run)


def _policy_service(args: argparse.Namespace) -> PolicyService | None:
    """The policy source named by the flags, checked to be readable before anything binds."""
    source: GitSource | DirSource
    if args.policy_git:
        source = GitSource(args.policy_git, args.policy_ref)
    elif args.policy_dir:
        source = DirSource(args.policy_dir)
    else:
        return None
    try:
        source.current_id()
    except PolicySourceError as exc:
        raise CliError(f"cannot read policy source {source.describe()}: {exc}") from exc
    poll = duration_flag(args.policy_poll, "--policy-poll")
    return PolicyService(PolicyWatcher(source, SystemClock()), poll)


def _gui(args: argparse.Namespace) -> GuiListener | None:
    if args.gui is None:
        if args.gui_allow_remote:
            raise CliError("--gui-allow-remote needs --gui HOST:PORT")
        return None
    try:
        host, port = parse_listen(args.gui)
        return GuiListener(host, port, allow_remote=args.gui_allow_remote)
    except RemoteGuiRefused as exc:
        raise CliError(str(exc)) from exc
    except ValueError as exc:
        raise CliError(f"--gui: {exc}") from exc


def _grace(text: str) -> timedelta:
    """`--expired-renew-grace`: a duration like every other, except that 0s is allowed (off)."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise CliError(f"--expired-renew-grace: {exc}") from exc
    if value < timedelta(0):
        raise CliError(f"--expired-renew-grace: duration {text!r} must not be negative")
    return value


def _run(args: argparse.Namespace) -> int:
    configure_logging(level=args.log_level)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    load_ca(args.state_dir)  # fail with one line before binding anything
    if args.store is not None and not args.store.startswith(("sqlite:///", "postgres://", "postgresql://")):
        raise CliError(
            f"--store: unsupported store URL {args.store!r}: expected sqlite:///PATH or postgresql://..."
        )
    tracing = _tracing(args)
    control_plane = ControlPlane(
        args.state_dir,
        host=host,
        port=port,
        svid_ttl=duration_flag(args.svid_ttl, "--svid-ttl"),
        expired_renew_grace=_grace(args.expired_renew_grace),
        policy=_policy_service(args),
        store_url=args.store,
        gui=_gui(args),
        tracer=tracing.tracer if tracing is not None and tracing.enabled else None,
        freeze_gc=True,
    )
    try:
        trio.run(_serve, control_plane)
    except BaseException as raised:
        failure = innermost(raised)
        if isinstance(failure, PostgresStoreError):
            raise CliError(f"--store: {failure}") from failure
        if isinstance(failure, OSError):  # typically: address already in use
            raise CliError(f"cannot listen on {args.listen}: {failure.strerror or failure}") from failure
        raise
    finally:
        if tracing is not None:
            tracing.shutdown()  # flush queued spans, bounded by the export timeout
    return 0


def _tracing(args: argparse.Namespace) -> Tracing | None:
    """Spans for join, renew and policy activation, only with an OTLP endpoint (flag or OTEL_*)."""
    from trustmesh.tracing.switch import tracing_wanted

    if not tracing_wanted(args.otlp_endpoint, os.environ):
        return None
    from trustmesh.tracing.setup import TracingConfigError, TracingOptions, setup_tracing

    ratio = args.trace_sample_ratio
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise CliError(f"--trace-sample-ratio: {ratio} is not between 0 and 1")
    try:
        return setup_tracing(
            TracingOptions(
                service_name="trustmesh-control-plane", endpoint=args.otlp_endpoint, sample_ratio=ratio
            ),
            env=os.environ,
        )
    except TracingConfigError as exc:
        raise CliError(f"tracing: {exc}") from exc


async def _serve(control_plane: ControlPlane) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(control_plane.run)
            async for signum in signals:
                log.info("control_plane_stopping", signal=signal.Signals(signum).name)
                control_plane.stop()
                break
