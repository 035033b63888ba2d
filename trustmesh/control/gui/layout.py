"""The page shell and the few formatting rules every page shares.

Pages are server-rendered HTML strings: the GUI has four pages and a handful of tables, which
does not justify a template engine as a dependency. Every value that came from outside (span
attributes, commit messages, SPIFFE IDs) goes through `esc` before it lands in markup.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from html import escape
from importlib.resources import files
from string import Template
from typing import Final

__all__ = ["PAGES", "esc", "fmt_ms", "iso_from_ns", "page", "short_sha"]

# (path, title) in navigation order.
PAGES: Final = (
    ("/topology", "Topology"),
    ("/workloads", "Workloads"),
    ("/policy", "Policy"),
    ("/traces", "Traces"),
)


def esc(value: object) -> str:
    """HTML-escape anything (None as an empty string), quotes included for attribute values."""
    return "" if value is None else escape(str(value), quote=True)


@cache
def _layout() -> Template:
    text = files("trustmesh.control.gui").joinpath("templates/layout.html").read_text("utf-8")
    return Template(text)


def page(title: str, current: str, body: str, *, trust_domain: str, head: str = "") -> str:
    """A whole page: navigation with `current` highlighted, then `body` (already escaped HTML)."""
    nav = "".join(
        f'<a href="{path}"{" class=current" if path == current else ""}>{esc(name)}</a>'
        for path, name in PAGES
    )
    return _layout().substitute(
        title=esc(title), nav=nav, body=body, head=head, trust_domain=esc(trust_domain)
    )


def fmt_ms(value_ms: float) -> str:
    if value_ms >= 1000:
        return f"{value_ms / 1000:.2f} s"
    if value_ms >= 10:
        return f"{value_ms:.0f} ms"
    return f"{value_ms:.1f} ms"


def iso_from_ns(unix_ns: int) -> str:
    return datetime.fromtimestamp(unix_ns / 1e9, UTC).isoformat(timespec="milliseconds")


def short_sha(revision: str | None) -> str:
    """Git SHAs shortened to 12 like `git log --oneline` would (dir: revisions kept whole)."""
    if revision is None:
        return "—"
    return revision[:12] if len(revision) == 40 else revision
