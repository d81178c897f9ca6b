"""The hub's labels directory follows the registry: at start, at once here, within a poll elsewhere."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from iothub.hub.core import Hub
from iothub.hub.labels import LabelDirectory
from iothub.hub.registry import DeviceRecord, Registry
from tests.conftest import hub_settings


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` for up to 5 s (the registry watcher itself polls once a second)."""
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the labels directory did not catch up within 5 s")


async def test_labels_follow_the_registry(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data")
    before = Registry(settings.data_dir / "registry.db")
    before.add_device("early", labels={"site": "a"})
    before.close()
    async with Hub(settings) as hub:
        await eventually(lambda: hub.labels.loaded)
        assert hub.labels.get("early") == {"site": "a"}  # loaded at start
        hub.registry.add_device("here", labels={"site": "b"})
        assert hub.labels.get("here") == {"site": "b"}  # this process's write: at once
        hub.registry.update_device("here", labels={"site": "c"})
        assert hub.labels.get("here") == {"site": "c"}
        other = Registry(settings.data_dir / "registry.db")  # another process: `iothub devices ...`
        try:
            other.add_device("there", labels={"site": "d"})
            await eventually(lambda: hub.labels.get("there") == {"site": "d"})
            other.remove_device("early")
            await eventually(lambda: "early" not in hub.labels)
        finally:
            other.close()


def test_the_newest_labels_win_when_the_older_write_is_told_last(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    registry.add_device("d")
    first_read = threading.Event()
    second_done = threading.Event()

    def hold_first(device_id: str, record: DeviceRecord | None) -> None:
        """Called before the directory's listener (registered first): holds the first writer
        between its read of the record and the directory's update until the second one is done."""
        if record is not None and record.labels == {"w": "1"}:
            first_read.set()
            second_done.wait(5)

    def second() -> None:
        if first_read.wait(5):
            registry.update_device("d", labels={"w": "2"})
        second_done.set()

    registry.on_device_change(hold_first)
    directory = LabelDirectory(registry)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(registry.update_device, "d", labels={"w": "1"})
            pool.submit(second).result(timeout=10)
            first.result(timeout=10)
        assert registry.device("d").labels == {"w": "2"}
        assert directory.get("d") == {"w": "2"}  # not the record the first writer held
    finally:
        registry.close()


def test_two_threads_writing_one_devices_labels(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    registry.add_device("d")

    # A listener before the directory's that reads the registry widens the race a stale record
    # needs (told after a newer one): without the re-read, most runs go stale within 300 rounds.
    def read_it(device_id: str, _: DeviceRecord | None) -> None:
        registry.find_device(device_id)

    registry.on_device_change(read_it)
    directory = LabelDirectory(registry)

    def write(name: str) -> None:
        for i in range(10):
            registry.update_device("d", labels={"writer": name, "n": str(i)})

    try:
        with ThreadPoolExecutor(2) as pool:
            for _ in range(300):
                for done in [pool.submit(write, "a"), pool.submit(write, "b")]:
                    done.result(timeout=10)
                assert directory.get("d") == registry.device("d").labels
    finally:
        registry.close()
