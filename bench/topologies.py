"""The three topologies of the sidecar benchmark, each started on loopback from its own temp dir.

    direct:    load generator ──plain──▶ nginx
    stunnel:   load generator ──plain──▶ stunnel client ══mTLS══▶ stunnel server ──plain──▶ nginx
    trustmesh: load generator ──plain──▶ sidecar outbound ══mTLS══▶ sidecar inbound ──plain──▶ nginx

Every leg has a plain-HTTP entry point (what wrk and the fixed-rate generator talk
to) and, when it has one, the TLS listener of its server-side proxy (what the
new-connections client handshakes with). All servers are pinned to the "server"
CPUs and the load generators to the others, so that a client does not steal the
core of the thing it measures.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.certs import TRUST_DOMAIN, Pki, trustmesh_command
from bench.procs import Processes, Started, free_port, wait_port

LOOPBACK = "127.0.0.1"
BODY_PATH = "/100b"
BULK_PATH = "/bulk"
BODY_BYTES = 100

API_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/api"
WEB_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/web"
# Leaves the harness itself presents (stunnel pair, handshake client). The handshake
# client uses the web identity, so the trustmesh inbound sees the caller it would see
# from the client sidecar, and the policy below lets it in.
HARNESS_LEAVES = {
    "stunnel-server": f"spiffe://{TRUST_DOMAIN}/bench/stunnel-server",
    "stunnel-client": f"spiffe://{TRUST_DOMAIN}/bench/stunnel-client",
    "client": WEB_ID,
}

START_TIMEOUT_S = 30.0


@dataclass
class Leg:
    """One running topology: where load goes in, and which proxy processes it measures."""

    name: str
    entry_port: int
    tls_port: int | None = None  # server-side proxy's mTLS listener
    proxies: list[Started] = field(default_factory=list)
    note: str = ""


class LegUnavailable(Exception):
    """A topology that cannot run in this checkout or on this machine; the message says why."""


def start_nginx(procs: Processes, work: Path, bulk_bytes: int, cpu_list: list[int]) -> int:
    """nginx with one worker serving a 100-byte body and a sparse bulk file, keep-alive on."""
    root = work / "nginx"
    www = root / "www"
    www.mkdir(parents=True)
    (www / BODY_PATH.lstrip("/")).write_bytes(b"x" * (BODY_BYTES - 1) + b"\n")
    with (www / BULK_PATH.lstrip("/")).open("wb") as f:
        f.truncate(bulk_bytes)  # sparse: reads cost page-cache zeros, not disk
    for d in (work, root, www):
        # nginx's worker drops to `nobody` when started as root; it must be able to read www.
        d.chmod(0o755)
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            worker_processes 1;
            daemon off;
            master_process on;
            pid {root}/nginx.pid;
            error_log {root}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {root}/client_body;
                proxy_temp_path {root}/proxy;
                fastcgi_temp_path {root}/fastcgi;
                default_type application/octet-stream;
                sendfile on;
                tcp_nopush on;
                tcp_nodelay on;
                keepalive_timeout 300s;
                keepalive_requests 100000000;
                server {{
                    listen {LOOPBACK}:{port} backlog=4096;
                    root {www};
                    location / {{ }}
                }}
            }}
            """
        )
    )
    proc = procs.start("nginx", ["nginx", "-p", str(root), "-e", f"{root}/error.log", "-c", str(conf)],
                       cpu_list=cpu_list)
    wait_port(LOOPBACK, port, START_TIMEOUT_S, proc.popen)
    return port


def direct(backend_port: int) -> Leg:
    return Leg("direct", backend_port)


def _stunnel_conf(path: Path, name: str, options: list[tuple[str, str]]) -> None:
    """One stunnel config: global options, then a single service (keys may repeat, e.g. `socket`)."""
    lines = ["foreground = yes", "syslog = no", "debug = warning", f"pid = {path.parent}/{name}.pid", "",
             f"[{name}]"]
    lines += [f"{k} = {v}" for k, v in options]
    path.write_text("\n".join(lines) + "\n")


def start_stunnel(procs: Processes, work: Path, pki: Pki, backend_port: int, cpu_list: list[int]) -> Leg:
    """A client/server stunnel4 pair: TLS 1.3 only, client certificate required, chains verified."""
    root = work / "stunnel"
    root.mkdir()
    server_port, client_port = free_port(), free_port()
    server, client = pki.leaves["stunnel-server"], pki.leaves["stunnel-client"]
    common = [
        ("CAfile", str(pki.roots)),
        ("verifyChain", "yes"),
        ("sslVersionMin", "TLSv1.3"),
        # Nagle off on both sides, as any proxy in the request path must have it.
        ("socket", "l:TCP_NODELAY=1"),
        ("socket", "r:TCP_NODELAY=1"),
    ]
    _stunnel_conf(root / "server.conf", "server", [
        ("accept", f"{LOOPBACK}:{server_port}"), ("connect", f"{LOOPBACK}:{backend_port}"),
        ("cert", str(server.chain)), ("key", str(server.key)), ("requireCert", "yes"), *common,
    ])
    _stunnel_conf(root / "client.conf", "client", [
        ("client", "yes"), ("accept", f"{LOOPBACK}:{client_port}"), ("connect", f"{LOOPBACK}:{server_port}"),
        ("cert", str(client.chain)), ("key", str(client.key)), *common,
    ])
    s = procs.start("stunnel-server", ["stunnel4", str(root / "server.conf")], cpu_list=cpu_list)
    wait_port(LOOPBACK, server_port, START_TIMEOUT_S, s.popen)
    c = procs.start("stunnel-client", ["stunnel4", str(root / "client.conf")], cpu_list=cpu_list)
    wait_port(LOOPBACK, client_port, START_TIMEOUT_S, c.popen)
    return Leg("stunnel", client_port, server_port, [c, s])


def _trustmesh(*args: str, timeout: float = 60.0) -> str:
    done = subprocess.run([*trustmesh_command(), *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise LegUnavailable(f"`trustmesh {' '.join(args[:2])}` failed: {done.stderr.strip()[-400:]}")
    return done.stdout.strip()


def _sidecar_help() -> str:
    done = subprocess.run([*trustmesh_command(), "sidecar", "--help"], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise LegUnavailable("`trustmesh sidecar` does not exist in this checkout yet")
    return done.stdout


def _wait_ready(proc: Started, admin: int) -> None:
    """`trustmesh wait-ready` on the sidecar's admin port, giving up at once if the sidecar dies."""
    waiter = subprocess.Popen(
        [*trustmesh_command(), "wait-ready", "--admin", f"{LOOPBACK}:{admin}", "--timeout", "30s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S + 10
        while waiter.poll() is None and proc.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if waiter.poll() is None:
            waiter.kill()
        _, err = waiter.communicate()
    if waiter.returncode != 0 or proc.popen.poll() is not None:
        raise LegUnavailable(f"{proc.name} did not become ready ({err.strip()[-300:]}); its log ends:\n"
                             f"{proc.log_tail(6)}")


POLICY = f"""\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: bench-web-reads-api
spec:
  selector:
    spiffeIds: ["{API_ID}"]
  action: ALLOW
  rules:
    - from:
        spiffeIds: ["{WEB_ID}"]
"""


def start_trustmesh(
    procs: Processes, work: Path, pki: Pki, backend_port: int, cpu_list: list[int],
    *, name: str = "trustmesh", sidecar_args: Sequence[str] = (), tree: Path | None = None,
    python: str | None = None,
) -> Leg:
    """Control plane plus a client and a server sidecar, each joined with its own token.

    `name` names the leg (its work directory and process names); `sidecar_args` go to both
    sidecars (the tracing leg passes `--otlp-endpoint`). `tree`: run the control plane and
    sidecars from that source tree (another commit's, for `sidecar_ab`) instead of this one.

    `python`: run the control plane and sidecars on that interpreter (one with trustmesh
    installed, for `interpreter_ab`) instead of the harness's.

    The sidecars get their SVIDs from the control plane running on the CA that issued
    the stunnel pair's certificates, so both legs handshake with the same PKI.
    """
    if pki.state_dir is None:
        raise LegUnavailable("the trustmesh CA is not in this checkout yet (certificates: stand-in)")
    sidecar_help = _sidecar_help()
    for needed in ("control-plane", "token", "wait-ready"):
        probe = subprocess.run([*trustmesh_command(), needed, "--help"], capture_output=True, timeout=60)
        if probe.returncode != 0:
            raise LegUnavailable(f"`trustmesh {needed}` does not exist in this checkout yet")
    root = work / name
    root.mkdir()
    prefix = "" if name == "trustmesh" else name + "-"
    # Policy is default deny once enforcement exists: one ALLOW rule lets web call api, and the
    # inbound evaluates it on every request, as it would in production. It goes wherever this
    # checkout takes policy from: the control plane, the sidecar, or both.
    policy_dir = root / "policy"
    policy_dir.mkdir()
    (policy_dir / "bench.yaml").write_text(POLICY)
    cp_help = subprocess.run([*trustmesh_command(), "control-plane", "--help"], capture_output=True,
                             text=True, timeout=60).stdout
    cp_policy = ["--policy-dir", str(policy_dir)] if "--policy-dir" in cp_help else []
    api_token = _trustmesh("token", "create", "--state-dir", str(pki.state_dir), "--spiffe-id", API_ID,
                           "--service", "api").splitlines()[-1]
    web_token = _trustmesh("token", "create", "--state-dir", str(pki.state_dir), "--spiffe-id", WEB_ID,
                           "--service", "web").splitlines()[-1]
    command = [python, "-m", "trustmesh.cli.main"] if python is not None else trustmesh_command()
    cp_port = free_port()
    cp = procs.start(prefix + "control-plane", [
        *command, "control-plane", "--state-dir", str(pki.state_dir),
        "--listen", f"{LOOPBACK}:{cp_port}", *cp_policy,
    ], cpu_list=cpu_list, cwd=tree)
    wait_port(LOOPBACK, cp_port, START_TIMEOUT_S, cp.popen)
    control_plane = f"https://{LOOPBACK}:{cp_port}"

    extra_args: list[str] = []  # server sidecar only
    log_args: list[str] = []  # both sidecars
    notes = []
    if cp_policy:
        notes.append("control plane serves")
    if "--policy-dir" in sidecar_help:
        extra_args = ["--policy-dir", str(policy_dir)]
        notes.append("server sidecar loads")
    note = ""
    if notes:
        note = f"{' and '.join(notes)} a one-rule ALLOW policy (web → api), evaluated on every request"
    if "--log-level" in sidecar_help:
        # Like stunnel's `debug = warning`: no per-request log lines on the hot path being measured.
        log_args = ["--log-level", "warning"]
    inbound_port, outbound_port = free_port(), free_port()
    server_admin, client_admin = free_port(), free_port()
    # `--debug`: if a sidecar dies, its log ends with the traceback the report quotes.
    server = procs.start(prefix + "sidecar-server", [
        *command, "--debug", "sidecar",
        "--control-plane", control_plane, "--join-token", api_token,
        "--inbound", f"{LOOPBACK}:{inbound_port}={LOOPBACK}:{backend_port}",
        "--admin", f"{LOOPBACK}:{server_admin}", "--data-dir", str(root / "server"), *extra_args, *log_args,
        *sidecar_args,
    ], cpu_list=cpu_list, cwd=tree)
    client = procs.start(prefix + "sidecar-client", [
        *command, "--debug", "sidecar",
        "--control-plane", control_plane, "--join-token", web_token,
        "--outbound", f"api={LOOPBACK}:{outbound_port}",
        "--endpoints", f"api={LOOPBACK}:{inbound_port}@{API_ID}",
        "--admin", f"{LOOPBACK}:{client_admin}", "--data-dir", str(root / "client"), *log_args,
        *sidecar_args,
    ], cpu_list=cpu_list, cwd=tree)
    for proc, admin in ((server, server_admin), (client, client_admin)):
        _wait_ready(proc, admin)
    wait_port(LOOPBACK, outbound_port, START_TIMEOUT_S, client.popen)
    wait_port(LOOPBACK, inbound_port, START_TIMEOUT_S, server.popen)
    return Leg(name, outbound_port, inbound_port, [client, server], note)


def settle(seconds: float = 1.0) -> None:
    """Let freshly started processes finish their start-up work before measuring them idle."""
    time.sleep(seconds)


def make_work_dir(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    return base
