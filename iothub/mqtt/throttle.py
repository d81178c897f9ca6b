"""Log lines about one client at most once a minute, so a client that repeats a mistake cannot flood the log.

:class:`Throttle` answers "is this key due a log line?" in O(1) and holds at most ``max_keys`` keys: when
full it forgets the keys whose interval has ended, and if that frees nothing, all of them (the worst
case is a few extra log lines, never unbounded memory).
"""

from __future__ import annotations

import time


class Throttle:
    def __init__(self, interval_s: float = 60.0, max_keys: int = 10_000) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[str, float] = {}

    def due(self, key: str, now: float | None = None) -> bool:
        """True (and the key's interval restarts) when ``key`` was not let through in the last interval."""
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        if last is None and len(self._last) >= self.max_keys:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
            if len(self._last) >= self.max_keys:
                self._last.clear()
        self._last[key] = now
        return True
