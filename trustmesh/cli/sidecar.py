"""`trustmesh sidecar`: flags parsed once into a `SidecarConfig`, then the process runs.

Every flag error is one line (`trustmesh: error: ...`) before anything starts: a sidecar
that half-starts with a typo in `--endpoints` would fail later, far from the cause.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from trustmesh.ca.join_token import InvalidJoinToken, JoinToken
from trustmesh.cli.errors import CliError
from trustmesh.durations import parse_duration
from trustmesh.sidecar.config import (
    HostPort,
    InboundConfig,
    Limits,
    OutboundConfig,
    SidecarConfig,
    StaticEndpoint,
)
from trustmesh.tracing.logs import configure_logging

# The sidecar process itself (trio, TLS, proxies, the control-plane client) is imported in
# `run` only: `trustmesh --help` and every other command should not pay its memory.

if TYPE_CHECKING:
    from trustmesh.sidecar.app import TelemetryOptions

T = TypeVar("T")

DEFAULT_ADMIN = "127.0.0.1:15000"


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sidecar",
        help="run a sidecar: mTLS in and out for one workload",
        description=(
            "Run a sidecar: join the mesh with a token (or the SVID persisted in --data-dir),"
            " accept mTLS on each --inbound and forward plain to the app, and carry the app's"
            " plain calls on each --outbound over mTLS to the service's endpoints."
        ),
    )
    p.add_argument(
        "--control-plane",
        action="append",
        required=True,
        metavar="URL",
        help="control plane https URL; repeat for failover, tried in order",
    )
    p.add_argument(
        "--join-token",
        metavar="TOKEN",
        help="single-use join token (`trustmesh token create`); not needed while a valid SVID is persisted",
    )
    p.add_argument(
        "--inbound", action="append", default=[], metavar="LISTEN=APP[,tcp]", help="mTLS in, plain to the app"
    )
    p.add_argument(
        "--outbound",
        action="append",
        default=[],
        metavar="SERVICE=LISTEN[,tcp]",
        help="the app calls SERVICE in plain text at LISTEN",
    )
    p.add_argument(
        "--endpoints",
        action="append",
        default=[],
        metavar="SERVICE=HOST:PORT@SPIFFE_ID",
        help="static endpoint of SERVICE and the identity it must present (repeatable); overrides"
        " the endpoints the control plane reports for that service",
    )
    p.add_argument(
        "--advertise",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="address others reach this workload's inbound at (default: the --inbound listen address)",
    )
    p.add_argument(
        "--admin", default=DEFAULT_ADMIN, metavar="HOST:PORT", help=f"admin port (default {DEFAULT_ADMIN})"
    )
    p.add_argument(
        "--data-dir", required=True, type=Path, metavar="DIR", help="where key, SVID and bundle persist"
    )
    p.add_argument(
        "--drain-timeout", default="15s", metavar="DURATION", help="SIGTERM: in-flight requests get this long"
    )
    p.add_argument(
        "--renew-backoff-max",
        default="30s",
        metavar="DURATION",
        help="longest wait between retries of join and renewal while the control plane is unreachable",
    )
    p.add_argument(
        "--body-timeout",
        default="60s",
        metavar="DURATION",
        help="a request body that sends nothing for this long gets 408 and its connections close",
    )
    p.add_argument(
        "--policy-dir",
        type=Path,
        metavar="DIR",
        help="read authorization policy from this directory instead of the control plane",
    )
    p.add_argument(
        "--policy-poll", default="5s", metavar="DURATION", help="how often to look for a new policy"
    )
    p.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="OTLP/HTTP collector (http://jaeger:4318; /v1/traces is appended); tracing is off without one"
        " (or OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    p.add_argument(
        "--trace-sample-ratio",
        type=float,
        metavar="R",
        help="share of new traces sampled, 0..1 (default 1.0, or OTEL_TRACES_SAMPLER_ARG);"
        " a caller's sampling decision is always followed",
    )
    p.add_argument(
        "--service-name",
        metavar="NAME",
        help="mesh service name for spans, logs and metrics (default: OTEL_SERVICE_NAME, else the"
        " SPIFFE ID's last path segment)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format",
        default="auto",
        choices=["json", "console", "auto"],
        help="stderr format (default: console on a terminal, JSON lines otherwise)",
    )
    p.set_defaults(func=run)


def _parse_each(flag: str, values: list[str], parse: Callable[[str], T]) -> tuple[T, ...]:
    out = []
    for value in values:
        try:
            out.append(parse(value))
        except ValueError as err:
            raise CliError(f"{flag}: {err}") from err
    return tuple(out)


def config_from_args(args: argparse.Namespace) -> SidecarConfig:
    """Parse and cross-check every flag; raise CliError naming the first bad one."""
    from trustmesh.sidecar.bootstrap import check_url

    urls = tuple(args.control_plane)
    try:
        for url in urls:
            check_url(url)
    except ValueError as err:
        raise CliError(f"--control-plane: {err}") from err
    if args.join_token is not None:
        try:
            JoinToken.parse(args.join_token)
        except InvalidJoinToken as err:
            raise CliError(f"--join-token: {err}") from err
    inbounds = _parse_each("--inbound", args.inbound, InboundConfig.parse)
    outbounds = _parse_each("--outbound", args.outbound, OutboundConfig.parse)
    endpoints = _parse_each("--endpoints", args.endpoints, StaticEndpoint.parse)
    (admin,) = _parse_each("--admin", [args.admin], HostPort.parse)
    drain_timeout = _duration("--drain-timeout", args.drain_timeout)
    body_timeout = _duration("--body-timeout", args.body_timeout)
    renew_backoff_max = _duration("--renew-backoff-max", args.renew_backoff_max)
    policy_poll = _duration("--policy-poll", args.policy_poll)
    if args.policy_dir is not None and not args.policy_dir.is_dir():
        raise CliError(f"--policy-dir: {args.policy_dir} is not a directory")
    if not inbounds and not outbounds:
        raise CliError("nothing to do: give at least one --inbound or --outbound")
    services = {o.service for o in outbounds}
    for ep in endpoints:
        if ep.service not in services:
            raise CliError(f"--endpoints: service {ep.service!r} has no --outbound")
    advertise = _parse_each("--advertise", args.advertise, HostPort.parse)
    if advertise and not inbounds:
        raise CliError("--advertise: there is no --inbound to advertise")
    return SidecarConfig(
        control_planes=urls,
        join_token=args.join_token,
        data_dir=args.data_dir,
        inbounds=inbounds,
        outbounds=outbounds,
        endpoints=endpoints,
        admin=admin,
        limits=Limits(drain_timeout=drain_timeout, body_timeout=body_timeout),
        policy_dir=args.policy_dir,
        policy_poll=policy_poll,
        advertise=advertise,
        renew_backoff_max=renew_backoff_max,
    )


def _duration(flag: str, text: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as err:
        raise CliError(f"{flag}: {err}") from err
    if value <= timedelta(0):
        raise CliError(f"{flag}: must be more than zero")
    return value


def telemetry_from_args(args: argparse.Namespace) -> TelemetryOptions:
    from trustmesh.sidecar.app import TelemetryOptions

    ratio = args.trace_sample_ratio
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise CliError(f"--trace-sample-ratio: {ratio} is not between 0 and 1")
    endpoint = args.otlp_endpoint
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise CliError(f"--otlp-endpoint: {endpoint!r} is not an http:// or https:// URL")
    return TelemetryOptions(
        otlp_endpoint=endpoint,
        sample_ratio=ratio,
        service_name=args.service_name,
        env=dict(os.environ),
    )


def run(args: argparse.Namespace) -> int:
    import trio

    from trustmesh.sidecar.app import Sidecar, SidecarFailed

    cfg = config_from_args(args)
    telemetry = telemetry_from_args(args)
    configure_logging(args.log_level, args.log_format)
    sidecar = Sidecar(cfg, telemetry=telemetry, freeze_gc=True)
    try:
        return trio.run(sidecar.run)
    except SidecarFailed as err:
        raise CliError(str(err)) from err
