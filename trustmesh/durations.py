"""Go-style durations (`30s`, `10m`, `1h30m`, `250ms`): the one format for every flag and file."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> timedelta:
    """Parse `1h30m` style text; raise ValueError naming the input when it is not one.

    A bare number is refused on purpose: `--ttl 10` is ambiguous (seconds? minutes?).
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 10m, 1h")
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 10m, 1h")
    return timedelta(seconds=total)


def format_duration(delta: timedelta | float) -> str:
    """The inverse of parse_duration for whole seconds: 5400s -> `1h30m`."""
    seconds = int(delta.total_seconds() if isinstance(delta, timedelta) else delta)
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    out = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return sign + "".join(out)
