"""The hub's labels directory follows the registry: at start, at once here, within a poll elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from iothub.hub.core import Hub
from iothub.hub.registry import Registry
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
