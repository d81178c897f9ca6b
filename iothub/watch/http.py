"""The hub's HTTP answers as one-line :class:`WatchError` messages."""

from __future__ import annotations

import httpx

from iothub.watch.events import WatchError


def hub_error(url: str, response: httpx.Response) -> WatchError:
    """``GET URL: 401 invalid token``: the status and the hub's own ``{"error": ...}`` message."""
    try:
        detail = response.json().get("error")
    except ValueError:
        detail = None
    detail = detail or response.text.strip()[:200] or response.reason_phrase
    return WatchError(f"{response.request.method} {url}: {response.status_code} {detail}")


def unreachable(url: str, exc: Exception) -> WatchError:
    reason = str(exc) or type(exc).__name__
    return WatchError(f"cannot reach the hub at {url}: {reason}")
