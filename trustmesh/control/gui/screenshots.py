"""`python -m trustmesh.control.gui.screenshots OUTDIR`: PNGs of every GUI page from a seeded control plane.

Regenerates docs/screenshots/ (the README shows them): starts the same seeded control plane as the
GUI's browser tests (`seeded.py`: real CA, git policy, joins, OTLP spans), opens each page in Debian's
chromium at 1280x800, waits until the page shows data, and saves one PNG per page. Needs the `dev`
extra (playwright) and /usr/bin/chromium (scripts/ci-system-deps.sh installs it).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import structlog
import trio

from trustmesh.control.gui.browser import ChromiumMissing, chromium_page, require_chromium
from trustmesh.control.gui.seeded import SeededMesh, start_seeded_mesh
from trustmesh.tracing.logs import configure_logging

log = structlog.get_logger(__name__)

# (file name, path, selector that proves the page has data)
SHOTS = (
    ("topology.png", "/topology", "#graph[data-edges='3']"),
    ("workloads.png", "/workloads", "tr[data-spiffe-id] .expiry"),
    ("policy.png", "/policy", "tr.decision"),
    ("traces.png", "/traces", "tr.trace-row"),
)


def _capture(mesh: SeededMesh, outdir: Path) -> list[Path]:
    saved = []
    with chromium_page() as page:
        for name, path, ready in SHOTS:
            page.goto(mesh.gui_url + path)
            page.wait_for_selector(ready)
            if path == "/policy":
                page.fill('input[name="source"]', "web")
                page.fill('input[name="destination"]', "db")
                page.select_option('select[name="method"]', "GET")
                page.fill('input[name="path"]', "/rows")
                page.click("form.explain button")
                page.wait_for_selector("#explain-answer")
            page.wait_for_timeout(1200)  # let gui.js tick and cytoscape settle
            page.screenshot(path=str(outdir / name))
            saved.append(outdir / name)
        page.goto(mesh.gui_url + "/traces")
        page.locator("tr.trace-row", has_text="web: GET api").first.locator("a").click()
        page.wait_for_url(re.compile(r"/traces/[0-9a-f]{32}$"))
        page.wait_for_selector("#waterfall .bar")
        page.screenshot(path=str(outdir / "trace.png"))
        saved.append(outdir / "trace.png")
    return saved


async def _main(outdir: Path) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix="trustmesh-screens-") as tmp:
        async with trio.open_nursery() as nursery:
            mesh = await start_seeded_mesh(nursery, Path(tmp), requests=40)
            try:
                with trio.fail_after(120):
                    return await trio.to_thread.run_sync(_capture, mesh, outdir, abandon_on_cancel=True)
            finally:
                mesh.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trustmesh.control.gui.screenshots OUTDIR", file=sys.stderr)
        return 2
    configure_logging(level="warning")
    outdir = Path(args[0])
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        require_chromium()
    except ChromiumMissing as exc:
        print(exc, file=sys.stderr)
        return 1
    for path in trio.run(_main, outdir):
        log.warning("screenshot_saved", path=str(path), bytes=path.stat().st_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
