"""The blocked-loop check: a real block fails a test, a wait for a busy CPU does not.

Each case runs its own event loop in a worker thread, so the check that guards every test (which
watches the test's own loop) is not tripped by what is done here on purpose.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.loopwatch import LoopWatch

LIMIT_S = 0.3
HAS_SCHEDSTAT = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").exists()


def _watch_one_callback(callback: object, cpu: int | None = None) -> LoopWatch:
    """Run ``callback`` once on a fresh debug-mode loop in this thread; what the watch made of it."""
    if cpu is not None:
        os.sched_setaffinity(threading.get_native_id(), {cpu})
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = LIMIT_S
    logger = logging.getLogger("asyncio")
    try:
        with LoopWatch(LIMIT_S) as watch:
            logger.addHandler(watch)
            try:
                loop.call_soon(callback)  # type: ignore[arg-type]
                loop.run_until_complete(asyncio.sleep(0))
            finally:
                logger.removeHandler(watch)
    finally:
        loop.close()
    return watch


def _compute_beside_busy_neighbours() -> LoopWatch:
    """0.1 s of CPU in a callback pinned to one CPU with four busy processes: ~0.5 s of wall time."""
    cpu = min(os.sched_getaffinity(0))
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        for proc in busy:
            os.sched_setaffinity(proc.pid, {cpu})

        def compute() -> None:
            start = time.thread_time()
            while time.thread_time() - start < 0.1:
                pass

        return _watch_one_callback(compute, cpu)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait(timeout=10)


async def test_a_sleeping_callback_is_blocking() -> None:
    watch = await asyncio.to_thread(_watch_one_callback, lambda: time.sleep(LIMIT_S * 1.5))
    assert len(watch.blocked) == 1, (watch.blocked, watch.excused)
    assert "waiting for a CPU" in watch.blocked[0]


async def test_a_callback_slowed_only_by_a_busy_cpu_is_excused() -> None:
    if not HAS_SCHEDSTAT:
        if os.environ.get("CI") == "true":
            pytest.fail("no per-thread schedstat (/proc/self/task/TID/schedstat) on this CI machine")
        pytest.skip("no per-thread schedstat here: only wall time can be measured")
    # Up to three tries: on a virtual machine that is itself loaded, the time the host takes the vCPU
    # away (steal) is not run-queue wait, so one try may find the callback slow with no wait to
    # subtract. A watch that subtracts nothing fails every try.
    tries = []
    for _ in range(3):
        watch = await asyncio.to_thread(_compute_beside_busy_neighbours)
        tries.append((watch.blocked, watch.excused))
        if not watch.blocked and watch.excused:
            break
    assert not watch.blocked, tries
    assert len(watch.excused) == 1, f"the callback was not even slow: the CPU was not contended ({tries})"
