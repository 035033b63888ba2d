"""Debian's chromium driven by playwright, for the GUI's tests and its screenshot tool.

Playwright's own browser download cannot work on our machines, so we point it at the system
chromium (`apt-get install chromium`, done by scripts/ci-system-deps.sh). We use playwright's
*sync* API, in one worker thread per browser session: the tests and the screenshot tool run the
control plane on trio in the main thread, and the sync API (greenlet-based) must stay on the thread
that started it. `trio.to_thread.run_sync(session_function)` gives exactly that.

playwright is a dev dependency (the `dev` extra); this module imports it only when called.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["CHROMIUM", "ChromiumMissing", "chromium_page"]

CHROMIUM: Final = Path(os.environ.get("TRUSTMESH_CHROMIUM", "/usr/bin/chromium"))
# Headless on a shared CI box: no GPU, no sandbox (we run as root in containers), and nothing
# that phones home or updates itself during a test.
CHROMIUM_ARGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
)
VIEWPORT: Final = {"width": 1280, "height": 800}
# Every playwright wait is bounded by this unless a call says otherwise.
DEFAULT_TIMEOUT_MS: Final = 15_000


class ChromiumMissing(RuntimeError):
    """The system chromium is not installed; the message says how to install it."""


def require_chromium() -> Path:
    if not CHROMIUM.exists():
        raise ChromiumMissing(
            f"{CHROMIUM} not found: the GUI's browser tests drive Debian's chromium. "
            "Install it with `bash scripts/ci-system-deps.sh` (as root; it runs `apt-get install chromium`), "
            "or set TRUSTMESH_CHROMIUM to another chromium binary."
        )
    return CHROMIUM


def _keep_errors(console: list[str], kind: str, text: str) -> None:
    if kind == "error":  # CSP violations and failed fetches are reported as console errors
        console.append(f"{kind}: {text}")


@contextmanager
def chromium_page(console: list[str] | None = None) -> Iterator[Page]:
    """A fresh headless chromium (own user-data dir) and one page; closed, and the browser process
    ended, on exit. Page console errors and failed requests are appended to `console` if given."""
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    with tempfile.TemporaryDirectory(prefix="trustmesh-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(executable),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport=VIEWPORT,  # type: ignore[arg-type]  # a dict with width/height is ViewportSize
            timeout=DEFAULT_TIMEOUT_MS,
        )
        try:
            context.set_default_timeout(DEFAULT_TIMEOUT_MS)
            page = context.pages[0] if context.pages else context.new_page()
            if console is not None:
                page.on("console", lambda m: _keep_errors(console, m.type, m.text))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            yield page
        finally:
            context.close()
