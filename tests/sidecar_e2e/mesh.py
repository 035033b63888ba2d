"""A real mesh in a temporary directory, for tests: a control plane and N sidecars as processes.

    with Mesh(tmp_path) as mesh:
        app = mesh.start_app()                               # echo backend (in-process thread)
        api = mesh.start_sidecar("api", inbound_to=app.port)
        web = mesh.start_sidecar("web", outbound={"api": api})
        status, headers, body = web.call("api", "GET", "/hello")

Everything listens on 127.0.0.1 on ports the kernel picked; every process is started
with its output in a log file under the mesh directory and stopped by its PID when the
`with` block ends (SIGTERM, then SIGKILL after a bound). Every wait is bounded and, on
timeout, raises with the tail of the process's log so a failure explains itself.

Later suites (policy, traffic, observability, demo) reuse this module: keep it free of
assertions about any one feature.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from trustmesh.loopback_ports import free_port as free_port

TRUST_DOMAIN = "example.org"
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0  # a loaded CI machine with two cores can take a while to start Python
STOP_TIMEOUT = 20.0  # drain timeout (default 15 s) plus margin

# One rule: every workload of the trust domain may call every other. Suites that test
# policy itself pass their own files.
ALLOW_ALL_POLICY = f"""\
apiVersion: trustmesh.dev/v1
kind: AuthorizationPolicy
metadata:
  name: e2e-allow-all
spec:
  selector:
    spiffeIds: ["spiffe://{TRUST_DOMAIN}/*"]
  action: ALLOW
  rules:
    - from:
        spiffeIds: ["spiffe://{TRUST_DOMAIN}/*"]
"""


def spiffe_id(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{name}"


def trustmesh_command() -> list[str]:
    return [sys.executable, "-m", "trustmesh.cli.main"]


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """A one-shot `trustmesh` command (ca init, token create, wait-ready...), output captured."""
    return subprocess.run([*trustmesh_command(), *args], capture_output=True, text=True, timeout=timeout)


def wait_until(
    predicate: Any, timeout: float, what: str, proc: Process | None = None, step: float = 0.05
) -> None:
    """Poll `predicate()` until true; TimeoutError naming `what` (and the process's log tail)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited ({proc.returncode}) while waiting for {what}:\n{proc.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = f":\n{proc.log_tail()}" if proc is not None else ""
            raise TimeoutError(f"{what}: not after {timeout:g}s{tail}")
        time.sleep(step)


@dataclass
class Process:
    """One child process with its log file; stopped by PID, never by name."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; SIGKILL if it has not exited within `timeout`. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_events(self) -> list[dict[str, Any]]:
        """The structured (JSON) log lines written so far."""
        events = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events


@dataclass
class ControlPlane:
    state_dir: Path
    port: int
    process: Process
    extra_args: list[str] = field(default_factory=list)
    store_args: list[str] = field(default_factory=list)  # ["--store", URL] for PostgreSQL

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def token(self, name: str, *, spiffe: str | None = None) -> str:
        """A fresh single-use join token for workload `name`."""
        done = run_cli(
            "token",
            "create",
            "--state-dir",
            str(self.state_dir),
            "--spiffe-id",
            spiffe or spiffe_id(name),
            "--service",
            name,
            *self.store_args,
        )
        if done.returncode != 0:
            raise RuntimeError(f"token create failed: {done.stderr}")
        return done.stdout.strip().splitlines()[-1]

    def start(self) -> None:
        self.process.start()
        wait_until(lambda: _accepts(self.port), START_TIMEOUT, "control plane listening", self.process)

    def stop(self) -> int | None:
        return self.process.stop()


@dataclass
class Sidecar:
    name: str
    admin_port: int
    data_dir: Path
    process: Process
    inbound_ports: list[int] = field(default_factory=list)
    outbound_ports: dict[str, int] = field(default_factory=dict)

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(self.name)

    @property
    def admin(self) -> str:
        return f"{LOOPBACK}:{self.admin_port}"

    def admin_get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        """One request to the admin port: (status, body)."""
        conn = http.client.HTTPConnection(LOOPBACK, self.admin_port, timeout=15)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def ready(self) -> bool:
        try:
            return self.admin_get("/ready")[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        wait_until(self.ready, timeout, f"{self.name} sidecar ready", self.process)

    def svid(self) -> dict[str, Any]:
        status, body = self.admin_get("/svid")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One plain HTTP request from the app's side through this sidecar's outbound to `service`."""
        conn = http.client.HTTPConnection(LOOPBACK, self.outbound_ports[service], timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def stop(self) -> int | None:
        return self.process.stop()


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, list[str]]


class EchoApp:
    """A local backend: answers every request with JSON of what it saw, and records it.

    `GET /slow?seconds=N` answers after N seconds (for drain tests); `started_slow` is set
    when such a request has arrived.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.seen: list[SeenRequest] = []
        self.started_slow = threading.Event()
        self.delay = delay  # seconds added to every answer (an endpoint made slow)
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                payload = self.rfile.read(length) if length else b""
                headers: dict[str, list[str]] = {}
                for key, value in self.headers.items():
                    headers.setdefault(key.lower(), []).append(value)
                app.seen.append(SeenRequest(self.command, self.path, headers))
                if app.delay:
                    time.sleep(app.delay)
                if self.path.startswith("/slow"):
                    app.started_slow.set()
                    seconds = float(self.path.partition("seconds=")[2] or "2")
                    time.sleep(seconds)
                body = json.dumps(
                    {"method": self.command, "path": self.path, "headers": headers, "body_len": len(payload)}
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="echo-app", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class Mesh:
    """A CA, a control plane and sidecars under one temporary directory; all stopped on exit."""

    def __init__(
        self,
        root: Path,
        *,
        svid_ttl: str | None = None,
        policy: str | None = ALLOW_ALL_POLICY,
        control_plane_args: Sequence[str] = (),
        store_url: str | None = None,
        ca_args: Sequence[str] = (),
    ) -> None:
        self.root = root
        self._ca_args = list(ca_args)  # e.g. ["--intermediate-ttl", "20s"] for rotation tests
        # With a PostgreSQL URL, several control planes (replicas) share one database.
        self.store_args = ["--store", store_url] if store_url else []
        self.replicas: list[ControlPlane] = []
        self.state_dir = root / "ca"
        self.policy_dir: Path | None = None
        self.sidecars: dict[str, Sidecar] = {}
        self.apps: list[EchoApp] = []
        self._svid_ttl = svid_ttl
        self._policy = policy
        self._cp_args = list(control_plane_args)
        self.control_plane: ControlPlane | None = None

    def __enter__(self) -> Mesh:
        try:
            self._start_control_plane()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def cp(self) -> ControlPlane:
        assert self.control_plane is not None
        return self.control_plane

    def _start_control_plane(self) -> None:
        done = run_cli(
            "ca",
            "init",
            "--trust-domain",
            TRUST_DOMAIN,
            "--state-dir",
            str(self.state_dir),
            *self.store_args,
            *self._ca_args,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ca init failed: {done.stderr}")
        self.control_plane = self.start_replica()

    def start_replica(self) -> ControlPlane:
        """A control plane on this mesh's state dir (and store); call again for another replica."""
        args = ["control-plane", "--state-dir", str(self.state_dir), "--log-level", "info", *self.store_args]
        if self._policy is not None:
            if self.policy_dir is None:
                self.policy_dir = self.root / "policy"
                self.policy_dir.mkdir()
                (self.policy_dir / "policy.yaml").write_text(self._policy)
            args += ["--policy-dir", str(self.policy_dir)]
        if self._svid_ttl is not None:
            args += ["--svid-ttl", self._svid_ttl]
        port = free_port()
        args += ["--listen", f"{LOOPBACK}:{port}", *self._cp_args]
        n = len(self.replicas)
        name = "control-plane" if n == 0 else f"control-plane-{n + 1}"
        process = Process(name, [*trustmesh_command(), *args], self.root / f"{name}.log")
        replica = ControlPlane(self.state_dir, port, process, store_args=self.store_args)
        self.replicas.append(replica)
        replica.start()
        return replica

    def start_app(self, delay: float = 0.0) -> EchoApp:
        app = EchoApp(delay)
        self.apps.append(app)
        return app

    def sidecar_argv(
        self,
        name: str,
        *,
        token: str | None,
        admin_port: int,
        inbound: Iterable[str] = (),
        outbound: Iterable[str] = (),
        endpoints: Iterable[str] = (),
        control_planes: Sequence[str] | None = None,
        extra: Sequence[str] = (),
        debug: bool = True,
    ) -> list[str]:
        """A sidecar's command line; `debug` makes a crash end its log with the traceback."""
        argv = [*trustmesh_command(), *(["--debug"] if debug else []), "sidecar"]
        for url in control_planes or [self.cp.url]:
            argv += ["--control-plane", url]
        if token is not None:
            argv += ["--join-token", token]
        for flag, values in (("--inbound", inbound), ("--outbound", outbound), ("--endpoints", endpoints)):
            for value in values:
                argv += [flag, value]
        argv += [
            "--admin",
            f"{LOOPBACK}:{admin_port}",
            "--data-dir",
            str(self.root / name),
            "--log-format",
            "json",
            *extra,
        ]
        return argv

    def start_sidecar(
        self,
        name: str,
        *,
        inbound_to: int | None = None,
        outbound: Mapping[str, Sidecar | None] | None = None,
        control_planes: Sequence[str] | None = None,
        extra: Sequence[str] = (),
        wait: bool = True,
        token: str | None = None,
        discover: bool = False,
    ) -> Sidecar:
        """Join a sidecar for workload `name` with `token`, or a fresh one.

        `inbound_to`: the local app port its inbound forwards to. `outbound`: services it
        calls, each mapped to that service's (already started) sidecar, or to None with
        `discover=True`: then no `--endpoints` are given and the control plane's stream
        reports the service's endpoints.
        """
        inbound, inbound_ports = [], []
        if inbound_to is not None:
            port = free_port()
            inbound_ports.append(port)
            inbound.append(f"{LOOPBACK}:{port}={LOOPBACK}:{inbound_to}")
        outbound_args, endpoints, outbound_ports = [], [], {}
        for service, target in (outbound or {}).items():
            port = free_port()
            outbound_ports[service] = port
            outbound_args.append(f"{service}={LOOPBACK}:{port}")
            if not discover:
                assert target is not None
                endpoints.append(f"{service}={LOOPBACK}:{target.inbound_ports[0]}@{target.spiffe_id}")
        admin_port = free_port()
        argv = self.sidecar_argv(
            name,
            token=token or self.cp.token(name),
            admin_port=admin_port,
            inbound=inbound,
            outbound=outbound_args,
            endpoints=endpoints,
            control_planes=control_planes,
            extra=extra,
        )
        process = Process(f"sidecar-{name}", argv, self.root / f"sidecar-{name}.log")
        sidecar = Sidecar(name, admin_port, self.root / name, process, inbound_ports, outbound_ports)
        self.sidecars[name] = sidecar
        process.start()
        if wait:
            sidecar.wait_ready()
        return sidecar

    def close(self) -> None:
        """Stop every process this mesh started, by PID, sidecars first; then the apps."""
        errors: list[BaseException] = []
        for sidecar in reversed(list(self.sidecars.values())):
            try:
                sidecar.stop()
            except Exception as exc:  # keep stopping the rest; re-raised below
                errors.append(exc)
        for replica in self.replicas:
            try:
                replica.stop()
            except Exception as exc:
                errors.append(exc)
        for app in self.apps:
            app.close()
        if errors:
            raise errors[0]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False
