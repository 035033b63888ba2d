"""The GUI's own plain-HTTP listener, run in the control plane's nursery.

Separate from the API listener on purpose: the API speaks only mTLS-capable TLS 1.3 to workloads,
while a browser needs plain HTTP (or an operator's reverse proxy in front). Loopback by default;
any other address must be asked for with `allow_remote=True` (`--gui-allow-remote`), because
the GUI has no authentication of its own and shows who may call whom.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from trustmesh.control.gui.app import build_gui_app
from trustmesh.control.gui.sources import GuiSources

if TYPE_CHECKING:
    from trustmesh.control.server import ControlPlane

log = structlog.get_logger(__name__)

DEFAULT_GUI_LISTEN = "127.0.0.1:8080"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


class RemoteGuiRefused(ValueError):
    """A non-loopback GUI address without `allow_remote`: the message says how to opt in."""


@dataclass
class GuiListener:
    """Where the GUI listens. `await nursery.start(gui.serve, control_plane)` returns its address."""

    host: str = "127.0.0.1"
    port: int = 8080
    allow_remote: bool = False
    sources: GuiSources | None = field(default=None, init=False)
    bound_port: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.allow_remote and not is_loopback(self.host):
            raise RemoteGuiRefused(
                f"GUI address {self.host} is not loopback; the GUI has no authentication, so pass "
                "--gui-allow-remote and put an authenticating proxy in front of it"
            )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.bound_port}"

    def allowed_hosts(self) -> list[str]:
        """Host headers the GUI answers. On loopback only loopback names, so a web page the operator
        visits cannot read the GUI by rebinding its own DNS name to 127.0.0.1."""
        if self.allow_remote:
            return ["*"]
        return sorted({"127.0.0.1", "localhost", "[::1]", "::1", self.host})

    async def serve(
        self, control_plane: ControlPlane, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled (the control plane cancels its nursery on stop)."""
        cp = control_plane
        assert cp.store is not None and cp.ca is not None, "start the GUI from ControlPlane.run"
        self.sources = GuiSources(
            store=cp.store,
            clock=cp.clock,
            trust_domain=cp.ca.bundle().trust_domain,
            policy=cp.policy.watcher if cp.policy is not None else None,
        )
        gui_app = build_gui_app(self.sources, allowed_hosts=self.allowed_hosts())
        app = ASGIWrapper(gui_app)  # type: ignore[arg-type]  # ASGI typings differ
        config = Config()
        config.include_server_header = False  # no software banner for scanners
        context = WorkerContext(None)

        async def handle(stream: trio.SocketStream) -> None:
            # TCPServer is annotated for SSLStream but uses only the stream interface.
            await TCPServer(app, config, context, ConnectionState({}), stream).run()  # type: ignore[arg-type]

        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.bound_port = listeners[0].socket.getsockname()[1]
        log.info(
            "gui_ready",
            url=self.url,
            otlp_endpoint=self.url,  # OTEL_EXPORTER_OTLP_ENDPOINT; the exporter appends /v1/traces
            remote=self.allow_remote,
        )
        task_status.started(self.url)
        await trio.serve_listeners(handle, listeners)
