"""Parsing of query parameters: times and durations. Pure functions; errors name the parameter."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable
from datetime import datetime

from iothub.bridge.errors import BadRequest

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def parse_duration_ms(name: str, text: str) -> int:
    """``500ms``, ``30s``, ``5m``, ``1h``, ``7d``; a bare number is seconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise BadRequest(f"parameter {name!r}: {text!r} is not a duration like 30s, 5m, 1h or 500ms")
    ms = round(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise BadRequest(f"parameter {name!r}: the duration must be positive")
    return ms


def parse_time_ms(name: str, text: str, now_ms: int) -> int:
    """Epoch milliseconds, RFC 3339 (with an offset), ``now``, or relative to now: ``-15m``, ``-1h``."""
    text = text.strip()
    if text == "now":
        return now_ms
    if text.startswith("-"):
        return now_ms - parse_duration_ms(name, text[1:])
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"parameter {name!r}: {text!r} is not epoch ms, RFC 3339, 'now' or a relative time like -1h"
        ) from None
    if parsed.tzinfo is None:
        raise BadRequest(f"parameter {name!r}: {text!r} needs a UTC offset (e.g. Z)")
    return round(parsed.timestamp() * 1000)


def parse_int(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"parameter {name!r}: {text!r} is not an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"parameter {name!r}: {value} is outside {low}..{high}")
    return value


def check_known(given: Iterable[str], known: Collection[str]) -> None:
    """Refuse a query parameter the endpoint does not take: a misspelt filter (``device`` for
    ``devices``) would otherwise widen the answer to everything, silently."""
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else "this endpoint takes " + ", ".join(sorted(known))
            raise BadRequest(f"unknown parameter {name!r} ({hint})")
