"""The SQLite store checkpoints its WAL on a thread of its own: a commit never waits for the disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

from iothub.hub.store import Batch, Point, SqliteStore
from tests.conftest import WAIT_S


async def test_the_wal_is_copied_into_the_database_by_the_store_s_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStore(path) as store:
        empty = path.stat().st_size
        points = [Point("d", "m", 1_700_000_000_000 + i, float(i)) for i in range(20_000)]
        await store.write(Batch(points=points))
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert wal > 100_000  # the commit went to the WAL: the writer does not checkpoint
        assert path.stat().st_size == empty
        checkpoint = store._checkpoint  # started by that write, on the checkpoint thread
        assert checkpoint is not None
        async with asyncio.timeout(WAIT_S):
            await asyncio.wait([checkpoint])
        assert path.stat().st_size > empty + 100_000  # the points are in the database file now
        assert len((await store.query("d", ["m"], 0, 2_000_000_000_000, None, "last", 5))[0].points) == 5  # type: ignore[arg-type]
