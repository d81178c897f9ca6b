"""Tells a callback that blocked the event loop from one that only waited for a CPU.

asyncio's debug mode reports every callback that took longer than ``slow_callback_duration`` of wall
time. On a loaded machine (two cores, other processes busy) a quick callback can take that long while
the loop's thread sits in the run queue waiting for a CPU: that is the machine, not the code. Linux
counts that wait per thread (``/proc/<pid>/task/<tid>/schedstat``, second field, in ns). A sampler
thread records it every few milliseconds; a slow callback counts as *blocking* only when its wall time
minus the run-queue wait during it is still over the limit, which is what a ``time.sleep``, a
synchronous socket or file call, or a long computation on the loop look like. Where schedstat is
missing, the wall time is all there is.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
import time
from collections import deque
from pathlib import Path

SAMPLE_EVERY_S = 0.005
_SLOW = re.compile(r"^Executing (.*) took (\d+(?:\.\d+)?) seconds$", re.DOTALL)


class LoopWatch(logging.Handler):
    """Attach to the ``asyncio`` logger on the loop's thread; :attr:`blocked` lists what blocked it."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(logging.WARNING)
        self.limit_s = limit_s
        self.blocked: list[str] = []
        self.excused: list[str] = []  # slow only because the thread waited for a CPU
        self._thread = threading.get_ident()  # the loop's thread: records from other loops are not ours
        self._stat = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat")
        self._times: deque[float] = deque(maxlen=20_000)
        self._waits: deque[int] = deque(maxlen=20_000)
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        if self._run_wait_ns() is not None:
            self._sampler = threading.Thread(target=self._sample, name="loopwatch", daemon=True)

    def __enter__(self) -> LoopWatch:
        if self._sampler is not None:
            self._record()
            self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()

    def _run_wait_ns(self) -> int | None:
        try:
            return int(self._stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return None

    def _record(self) -> None:
        wait = self._run_wait_ns()
        if wait is not None:
            self._times.append(time.monotonic())
            self._waits.append(wait)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self._record()

    def _waited_since(self, start: float) -> float:
        """Seconds the loop's thread spent waiting for a CPU since ``start`` (0 when unknown)."""
        now_wait = self._run_wait_ns()
        times = list(self._times)
        i = bisect.bisect_right(times, start) - 1
        if now_wait is None or i < 0:
            return 0.0
        return max(0, now_wait - self._waits[i]) / 1e9

    def emit(self, record: logging.LogRecord) -> None:
        match = _SLOW.match(record.getMessage())
        if match is None or record.thread != self._thread:
            return
        took = float(match.group(2))
        waited = self._waited_since(time.monotonic() - took)
        line = f"{match.group(1)} took {took:.3f} s, of which {waited:.3f} s waiting for a CPU"
        (self.blocked if took - waited >= self.limit_s else self.excused).append(line)
