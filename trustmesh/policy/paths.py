"""Request-path normalisation before policy matching.

A rule that guards `/admin` is worthless if `/items/../admin`, `//admin` or
`/%61dmin` reach the application as `/admin` without matching it. Different
servers disagree about how to read such paths, so the sidecar either rewrites a
path into the one form everybody agrees on, or refuses it (HTTP 400) when no
such form exists:

- the query string (after `?`) is not part of the path and is dropped;
- percent-encoded *unreserved* characters (ALPHA, DIGIT, `-`, `.`, `_`, `~`) are
  decoded (`/%61dmin` -> `/admin`); other escapes are kept, with upper-case hex;
- `//` collapses to `/`; `.` and `..` segments are resolved (RFC 3986 §5.2.4)
  *after* decoding, so `/%2e%2e/` is treated as `/../`;
- refused as ambiguous: an encoded `/` (`%2F`), encoded `%` (`%25`), a backslash
  (raw or `%5C`), NUL or any control character (raw or encoded), `#`, non-ASCII
  bytes, a malformed escape, a path not starting with `/`, and `..` that would
  climb above the root. Each of these is read differently by some server.

Policy files must spell their own paths in normal form; the loader checks that.
"""

from __future__ import annotations

import re

__all__ = ["AmbiguousPath", "normalize_path"]


class AmbiguousPath(ValueError):
    """The path has no single reading; the sidecar answers 400 and denies (`ambiguous-path`)."""


# Paths made only of these characters, with no `//` and no dot segment, are already normal:
# the common case returns without building a new string.
_PLAIN = re.compile(r"[A-Za-z0-9/\-._~!$&'()*+,;=:@]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Escapes that decode to a character some server would treat as structure, not data.
_REFUSED_ESCAPES = frozenset({0x2F, 0x25, 0x5C, 0x7F} | set(range(0x20)))


def normalize_path(raw: str) -> str:
    """The normal form of request path `raw` (query dropped), or raise `AmbiguousPath`."""
    path = raw.partition("?")[0]
    if _PLAIN.fullmatch(path) and path.startswith("/") and "//" not in path and "/." not in path:
        return path
    if not path.startswith("/"):
        raise AmbiguousPath(f"path {raw!r} does not start with '/'")
    for char in path:
        code = ord(char)
        if code < 0x21 or code >= 0x7F or char in "\\#":
            raise AmbiguousPath(f"path {raw!r} contains a forbidden character {char!r}")
    if "%" in path:
        path = _decode_unreserved(path, raw)
    return _resolve_segments(path, raw)


def _decode_unreserved(path: str, raw: str) -> str:
    if path.count("%") != len(_ESCAPE.findall(path)):
        raise AmbiguousPath(f"path {raw!r} has a malformed percent escape")

    def replace(match: re.Match[str]) -> str:
        code = int(match.group(1), 16)
        if code in _REFUSED_ESCAPES:
            raise AmbiguousPath(f"path {raw!r} encodes a reserved byte %{code:02X}")
        char = chr(code)
        return char if char in _UNRESERVED else f"%{code:02X}"

    return _ESCAPE.sub(replace, path)


def _resolve_segments(path: str, raw: str) -> str:
    # path starts with "/", so the first split element is always "".
    segments = path.split("/")[1:]
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if not out:
                raise AmbiguousPath(f"path {raw!r} climbs above the root")
            out.pop()
        elif segment not in (".", ""):
            out.append(segment)
    # A trailing "/", "/." or "/.." leaves a directory: keep the trailing slash, as servers do.
    trailing = segments[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")
