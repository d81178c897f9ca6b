"""The advisory file lock the writers of several hub processes sharing one SQLite store queue on.

:meth:`WritersLock.turn` takes it without blocking, retrying after short sleeps (1 ms doubling to
20 ms) until ``timeout_s`` has passed, then raises TimeoutError (which the store reports as a
:class:`~iothub.hub.errors.StoreError`): a process that hangs while holding it cannot hang the others
(nor their shutdown). It runs on the store's writer thread, so the sleeps never reach the event
loop. Where ``fcntl`` is missing (Windows) there is no file lock and the writers wait in SQLite's
busy handler alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

FIRST_PAUSE_S = 0.001
LONGEST_PAUSE_S = 0.02


class WritersLock:
    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._file: IO[bytes] | None = None

    def open(self) -> None:
        if fcntl is not None:
            self._file = open(self.path, "ab")  # noqa: SIM115 (held open until close)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the lock for the block; TimeoutError, saying so, when it stays taken for ``timeout_s``."""
        if self._file is None:
            yield
            return
        deadline = time.monotonic() + self.timeout_s
        pause = FIRST_PAUSE_S
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"another process has held the writers' lock {self.path} for over {self.timeout_s:g} s"
                    ) from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, LONGEST_PAUSE_S)
        try:
            yield
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)
