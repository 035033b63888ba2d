"""The GUI in a real browser (Debian's chromium via playwright) against a real control plane.

The control plane runs on trio in this thread; the browser session runs in one worker thread with
playwright's sync API (see trustmesh/control/gui/browser.py), and asks the trio thread for more
traffic with `trio.from_thread.run`. Every wait is bounded (playwright's default timeout, and
`fail_after` around the whole session). Screenshots land in test-output/gui/<test>/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import trio
from playwright.sync_api import Page, expect

from trustmesh.control.gui.browser import ChromiumMissing, chromium_page, require_chromium
from trustmesh.control.gui.seeded import SeededMesh, send_traffic, spiffe_id

SESSION_TIMEOUT_S = 180


def _seconds(text: str) -> int:
    """'1h 02m 03s' / '59m 58s' / '45s' -> seconds."""
    parts = dict((unit, int(n)) for n, unit in re.findall(r"(\d+)([hms])", text))
    assert parts, f"not a countdown: {text!r}"
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


def _topology(page: Page, mesh: SeededMesh, out: Path) -> None:
    page.goto(f"{mesh.gui_url}/topology")
    # cytoscape has drawn the graph: 4 services, 3 edges (web->api, api->db, web->db).
    # Polled by playwright, not a `wait_for_function` string (eval'd, refused by the GUI's CSP).
    expect(page.locator("#graph")).to_have_attribute("data-edges", "3", timeout=30_000)
    nodes = page.evaluate("window.trustmeshTopology.nodes().map(n => n.data('label')).sort()")
    assert nodes == ["api", "db", "report", "web"]
    states = page.evaluate(
        "Object.fromEntries(window.trustmeshTopology.edges().map(e => [e.id(), e.data('state')]))"
    )
    assert states == {"e:api->db": "ok", "e:web->api": "degraded", "e:web->db": "denied"}
    label = page.evaluate("window.trustmeshTopology.getElementById('e:web->api').data('label')")
    assert re.search(r"rps · \d+% ok · p99 [\d.]+ ms", label), label
    denied_row = page.locator('tr[data-edge="web->db"]')
    expect(denied_row.locator(".badge")).to_have_text("denied")
    expect(denied_row.locator("td").nth(3)).to_have_text("0%")
    page.screenshot(path=str(out / "topology.png"))

    # Live: new spans show up without a reload.
    page.evaluate("window.__sameDocument = true")
    row = page.locator('tr[data-edge="api->db"] td').nth(6)
    before = int(row.inner_text())
    trio.from_thread.run(send_traffic, mesh, 5)
    expect(row).to_have_text(str(before + 5), timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"


def _workloads(page: Page, mesh: SeededMesh, out: Path) -> None:
    page.goto(f"{mesh.gui_url}/workloads")
    web = page.locator(f'tr[data-spiffe-id="{spiffe_id("web")}"]')
    expect(web).to_contain_text("web")
    serial = mesh.svids["web"].serial
    expect(web.locator("td").nth(3)).to_have_text(serial[:16])
    expiry = web.locator(".expiry")
    expect(expiry).to_have_text(re.compile(r"^\d+m \d\ds$"))  # counted by gui.js, not the server's "3598s"
    first = _seconds(expiry.inner_text())
    time.sleep(2.5)
    second = _seconds(expiry.inner_text())
    assert 1 <= first - second <= 4, (first, second)
    assert 3300 < second < 3600
    # The short-lived job's 50 s SVID is under a minute from expiry: a warning (or, on a machine so
    # loaded that 50 s passed since seeding, already marked expired).
    report = page.locator(f'tr[data-spiffe-id="{spiffe_id("report")}"] .expiry')
    expect(report).to_have_class(re.compile(r"\b(warn|expired)\b"))
    assert "warn" in (report.get_attribute("class") or "") or "expired" in report.inner_text()
    expect(web.locator(".seen")).to_have_text(re.compile(r"\d+s ago"))
    page.screenshot(path=str(out / "workloads.png"))


def _policy(page: Page, mesh: SeededMesh, out: Path) -> None:
    page.goto(f"{mesh.gui_url}/policy")
    expect(page.locator("#active-revision")).to_have_text(mesh.revision[:12])
    expect(page.locator("#active-message")).to_have_text("web reads api, api uses db; nothing for web -> db")
    expect(page.locator("#policies")).to_contain_text("api-is-read-only")
    expect(page.locator("#last-refused")).to_contain_text("report.yaml:6")
    expect(page.locator("#last-refused")).to_contain_text("unknown action 'ALOW'")
    # Denied decisions with the deciding rule: an explicit DENY rule, and default deny.
    by_rule = page.locator('tr.decision[data-decision="DENY"]', has_text="POST /items").first
    expect(by_rule).to_contain_text("api-is-read-only rule 0")
    expect(by_rule).to_contain_text("mesh.yaml:")
    by_default = page.locator('tr.decision[data-decision="DENY"]', has_text="GET /rows").first
    expect(by_default).to_contain_text("default-deny")
    allowed = page.locator('tr.decision[data-decision="ALLOW"]', has_text="GET /items").first
    expect(allowed).to_contain_text("web-reads-api rule 0")

    # The explain form answers from the active revision, without leaving the page.
    page.evaluate("window.__sameDocument = true")
    page.fill('input[name="source"]', "web")
    page.fill('input[name="destination"]', "api")
    page.select_option('select[name="method"]', "DELETE")
    page.fill('input[name="path"]', "/items/7")
    page.click("form.explain button")
    answer = page.locator("#explain-answer")
    expect(answer).to_contain_text("DENY")
    expect(answer).to_contain_text("api-is-read-only rule 0")
    page.screenshot(path=str(out / "policy.png"))
    page.select_option('select[name="method"]', "GET")
    page.click("form.explain button")
    expect(answer).to_contain_text("ALLOW")
    expect(answer).to_contain_text("web-reads-api rule 0")
    page.fill('input[name="destination"]', "nosuch")
    page.click("form.explain button")
    expect(page.locator("#explain-error")).to_contain_text("neither a SPIFFE ID nor a registered service")
    assert page.evaluate("window.__sameDocument") is True


def _traces(page: Page, mesh: SeededMesh, out: Path) -> None:
    page.goto(f"{mesh.gui_url}/traces")
    row = page.locator("tr.trace-row", has_text="web: GET api").first
    expect(row.locator("td").nth(3)).to_have_text("5")
    expect(row.locator("td").nth(2)).to_have_text("api db web")
    page.screenshot(path=str(out / "traces.png"))
    row.locator("a").click()
    page.wait_for_url(re.compile(r"/traces/[0-9a-f]{32}$"))
    spans = page.locator("tr.span-row")
    expect(spans).to_have_count(5)
    services = sorted(set(spans.evaluate_all("rows => rows.map(r => r.dataset.service)")))
    assert services == ["api", "db", "web"]
    kinds = spans.evaluate_all("rows => rows.map(r => r.dataset.service + ':' + r.dataset.kind)")
    # Depth-first: web's CLIENT span sits right above api's SERVER span, and so on down to db.
    assert kinds == ["web:INTERNAL", "web:CLIENT", "api:SERVER", "api:CLIENT", "db:SERVER"], kinds
    expect(page.locator("#waterfall .bar")).to_have_count(5)
    page.screenshot(path=str(out / "trace.png"))


async def test_every_page_shows_the_running_control_plane(mesh: SeededMesh, output_dir: Path) -> None:
    try:
        require_chromium()
    except ChromiumMissing as exc:
        pytest.fail(str(exc))
    console: list[str] = []

    def session() -> None:
        with chromium_page(console) as page:
            _topology(page, mesh, output_dir)
            _workloads(page, mesh, output_dir)
            _policy(page, mesh, output_dir)
            _traces(page, mesh, output_dir)

    with trio.fail_after(SESSION_TIMEOUT_S):
        await trio.to_thread.run_sync(session, abandon_on_cancel=True)
    assert console == [], console
    for name in ("topology", "workloads", "policy", "traces", "trace"):
        assert (output_dir / f"{name}.png").stat().st_size > 10_000
