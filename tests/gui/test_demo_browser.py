"""`trustmesh demo`, seen in a real browser: every GUI page shows real data from the running demo.

The demo runs as a real subprocess (control plane, three apps, three sidecars, all on
loopback); Debian's chromium, driven by playwright, reads its GUI. Screenshots of each
page land in test-output/gui/<test>/. At the end the demo is stopped with SIGINT, as a user
would with Ctrl-C, and must exit 0 having stopped every process it started.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from trustmesh.control.gui.browser import ChromiumMissing, chromium_page, require_chromium
from trustmesh.loopback_ports import free_port

DEMO_START_TIMEOUT_S = 150
DEMO = "spiffe://demo.trustmesh.local/ns/demo/sa"


def _seconds(text: str) -> int:
    parts = {unit: int(n) for n, unit in re.findall(r"(\d+)([hms])", text)}
    assert parts, f"not a countdown: {text!r}"
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.gui_port = free_port()
        self.output = workdir / "demo.out"
        self._out = self.output.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trustmesh.cli.main", "demo", "--duration", "10m",
             "--gui-port", str(self.gui_port), "--workdir", str(workdir / "demo")],
            stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    @property
    def gui(self) -> str:
        return f"http://127.0.0.1:{self.gui_port}"

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.process.poll() is not None:
                raise AssertionError(f"demo exited {self.process.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"demo: no {needle!r} after {timeout}s:\n{self.text()}")
            time.sleep(0.2)

    def interrupt(self) -> int:
        """Ctrl-C, then wait; killed (and the test fails) if it does not stop by itself."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise
        self._out.close()
        return self.process.returncode


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = Demo(tmp_path)
    try:
        running.wait_for("[6/6] traffic flowing", DEMO_START_TIMEOUT_S)
        yield running
    finally:
        if running.process.poll() is None:
            running.interrupt()


def _topology(page: Page, demo: Demo, out: Path) -> None:
    page.goto(f"{demo.gui}/topology")
    # Polled by playwright itself: a `wait_for_function` string is eval'd in the page, which the
    # GUI's Content-Security-Policy (script-src 'self') refuses once it has to poll.
    three_or_more = re.compile(r"^([3-9]|[1-9]\d+)$")
    expect(page.locator("#graph")).to_have_attribute("data-edges", three_or_more, timeout=60_000)
    nodes = page.evaluate("window.trustmeshTopology.nodes().map(n => n.data('label')).sort()")
    assert nodes == ["api", "db", "web"], nodes
    states = page.evaluate(
        "Object.fromEntries(window.trustmeshTopology.edges().map(e => [e.id(), e.data('state')]))"
    )
    assert states["e:web->db"] == "denied", states
    assert states["e:web->api"] == "ok" and states["e:api->db"] == "ok", states
    expect(page.locator('tr[data-edge="web->db"] .badge')).to_have_text("denied")
    page.screenshot(path=str(out / "topology.png"))


def _workloads(page: Page, demo: Demo, out: Path) -> None:
    page.goto(f"{demo.gui}/workloads")
    web = page.locator(f'tr[data-spiffe-id="{DEMO}/web"]')
    expect(web).to_contain_text("web")
    expiry = web.locator(".expiry")
    expect(expiry).to_have_text(re.compile(r"^\d+m \d\ds$"))
    first = _seconds(expiry.inner_text())
    time.sleep(2.5)
    second = _seconds(expiry.inner_text())
    assert 1 <= first - second <= 5, (first, second)  # counting down, live
    page.screenshot(path=str(out / "workloads.png"))


def _policy(page: Page, demo: Demo, out: Path) -> None:
    page.goto(f"{demo.gui}/policy")
    expect(page.locator("#active-message")).to_contain_text("nothing for web -> db")
    denied = page.locator('tr.decision[data-decision="DENY"]', has_text="GET /rows").first
    expect(denied).to_contain_text("default-deny", timeout=30_000)
    allowed = page.locator('tr.decision[data-decision="ALLOW"]', has_text="GET /items").first
    expect(allowed).to_contain_text("web-reads-api rule 0")
    page.screenshot(path=str(out / "policy.png"))


def _traces(page: Page, demo: Demo, out: Path) -> None:
    page.goto(f"{demo.gui}/traces")
    # Each sidecar exports its spans in batches on its own timer, so the newest trace may still
    # wait for the api sidecar's part: any trace of web's call that shows both services will do.
    both = page.locator("td:nth-child(3)", has_text=re.compile(r"^api web$"))
    row = page.locator("tr.trace-row", has_text="web: GET api").filter(has=both).first
    expect(row).to_be_visible(timeout=30_000)
    page.screenshot(path=str(out / "traces.png"))
    row.locator("a").click()
    page.wait_for_url(re.compile(r"/traces/[0-9a-f]{32}$"))
    spans = page.locator("tr.span-row")
    services = sorted(set(spans.evaluate_all("rows => rows.map(r => r.dataset.service)")))
    assert services == ["api", "web"], services  # spans from two sidecars, one trace
    kinds = spans.evaluate_all("rows => rows.map(r => r.dataset.service + ':' + r.dataset.kind)")
    assert "web:CLIENT" in kinds and "api:SERVER" in kinds, kinds
    assert kinds.index("web:CLIENT") < kinds.index("api:SERVER"), kinds  # parent above child
    page.screenshot(path=str(out / "trace.png"))


def test_the_demo_in_a_real_browser(demo: Demo, output_dir: Path) -> None:
    try:
        require_chromium()
    except ChromiumMissing as exc:
        pytest.fail(str(exc))
    console: list[str] = []
    with chromium_page(console) as page:
        _topology(page, demo, output_dir)
        _workloads(page, demo, output_dir)
        _policy(page, demo, output_dir)
        _traces(page, demo, output_dir)
    assert console == [], console
    assert demo.interrupt() == 0, demo.text()
    text = demo.text()
    assert "stopped 7 processes cleanly" in text, text
    for pid in re.findall(r"pid (\d+)", text):
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"demo left pid {pid} running")
