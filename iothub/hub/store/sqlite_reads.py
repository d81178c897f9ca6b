"""The SQLite store's reads: plain functions of a reader connection.

:class:`~iothub.hub.store.sqlite.SqliteStore` runs each of them on its reader pool (one connection per
reader thread), so none of them runs on the event loop. The tables are described in
:mod:`iothub.hub.store.sqlite`.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from iothub.hub.events import EventType, HubEvent
from iothub.hub.store.base import Agg, Series, StoredDevice, Value

_AGG_SQL = {Agg.AVG: "AVG(num)", Agg.MIN: "MIN(num)", Agg.MAX: "MAX(num)", Agg.COUNT: "COUNT(*)"}

# Downsampling: the buckets of the range, newest first (``(ts / step) * step``, whole multiples of the
# step), each aggregated by its own index range scan. Grouping the rows instead (``GROUP BY ts / step``)
# sorts every point of the range in a temporary B-tree: 4 times slower over 1,000,000 points.
_BUCKETS = "WITH RECURSIVE b(start) AS (SELECT ? UNION ALL SELECT start - ? FROM b WHERE start - ? >= ?)"
_IN_BUCKET = "series_id = ? AND ts >= max(start, ?) AND ts < start + ? AND ts <= ?"


def _bucket_args(start_ms: int, end_ms: int, step_ms: int) -> tuple[int, int, int, int]:
    first = start_ms // step_ms * step_ms
    return end_ms // step_ms * step_ms, step_ms, step_ms, first


def _decode(kind: str, num: float | None, txt: str | None) -> Value | None:
    """A stored point's value as it was written: ``kind`` is the series' (number, bool, string)."""
    if txt is not None:
        return txt
    if num is None:
        return None
    if kind == "bool":
        return num != 0
    return int(num) if num.is_integer() and abs(num) < 2**53 else num


def load_devices(conn: sqlite3.Connection) -> list[StoredDevice]:
    """Every stored device with its state and the latest value of each of its metrics."""
    latest: dict[str, dict[str, tuple[int, Value]]] = {}
    series = conn.execute("SELECT id, device_id, metric, kind FROM series").fetchall()
    for sid, device_id, metric, kind in series:
        row = conn.execute(
            "SELECT ts, num, txt FROM points WHERE series_id = ? ORDER BY ts DESC LIMIT 1", (sid,)
        ).fetchone()
        if row is not None:
            value = _decode(kind, row[1], row[2])
            if value is not None:
                latest.setdefault(device_id, {})[metric] = (row[0], value)
    return [
        StoredDevice(device_id, json.loads(state), latest.get(device_id, {}))
        for device_id, state in conn.execute("SELECT id, state FROM devices ORDER BY id")
    ]


def metrics_of(conn: sqlite3.Connection, device_id: str) -> list[str]:
    rows = conn.execute("SELECT metric FROM series WHERE device_id = ? ORDER BY metric", (device_id,))
    return [m for (m,) in rows]


def query(
    conn: sqlite3.Connection,
    device_id: str,
    metrics: list[str],
    start_ms: int,
    end_ms: int,
    step_ms: int | None,
    agg: Agg,
    limit: int,
) -> list[Series]:
    """The newest ``limit`` points (or buckets of ``step_ms``) of each metric in the range, in time order."""
    out = []
    for metric in metrics:
        row = conn.execute(
            "SELECT id, kind FROM series WHERE device_id = ? AND metric = ?", (device_id, metric)
        ).fetchone()
        if row is None:
            out.append(Series(metric, []))
            continue
        sid, kind = row
        # One more than ``limit`` is read to tell whether older ones were left out.
        if step_ms is None:
            rows = conn.execute(
                "SELECT ts, num, txt FROM points WHERE series_id = ? AND ts BETWEEN ? AND ? ORDER BY ts DESC LIMIT ?",
                (sid, start_ms, end_ms, limit + 1),
            )
            points = [(ts, _decode(kind, num, txt)) for ts, num, txt in rows]
        elif agg is Agg.LAST or (kind == "string" and agg is not Agg.COUNT):
            rows = conn.execute(
                f"{_BUCKETS} SELECT start, p.num, p.txt FROM b JOIN points AS p ON p.rowid = ("
                f"SELECT rowid FROM points WHERE {_IN_BUCKET} ORDER BY ts DESC LIMIT 1) LIMIT ?",
                (*_bucket_args(start_ms, end_ms, step_ms), sid, start_ms, step_ms, end_ms, limit + 1),
            )
            points = [(b, _decode(kind, num, txt)) for b, num, txt in rows]
        else:
            rows = conn.execute(
                f"{_BUCKETS} SELECT start, v FROM (SELECT start, (SELECT {_AGG_SQL[agg]} FROM points"
                f" WHERE {_IN_BUCKET}) AS v FROM b) WHERE v IS NOT NULL AND (v != 0 OR ?) LIMIT ?",
                (*_bucket_args(start_ms, end_ms, step_ms), sid, start_ms, step_ms, end_ms,
                 agg is not Agg.COUNT, limit + 1),
            )  # fmt: skip
            points = [(b, v) for b, v in rows]
        truncated = len(points) > limit
        out.append(Series(metric, points[:limit][::-1], truncated))
    return out


def events_after(conn: sqlite3.Connection, after_id: int, limit: int) -> list[HubEvent]:
    rows = conn.execute(
        "SELECT id, ts, type, device_id, data FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
    )
    return [HubEvent(i, EventType(t), ts, d, json.loads(data)) for i, ts, t, d, data in rows]


def event_bounds(conn: sqlite3.Connection) -> tuple[int, int]:
    """The oldest and newest stored event ids (0, 0 when there is none)."""
    low, high = conn.execute("SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM events").fetchone()
    return int(low), int(high)


def stats(conn: sqlite3.Connection) -> dict[str, Any]:
    (points,) = conn.execute("SELECT COUNT(*) FROM points").fetchone()
    (events,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
    return {"points": points, "events": events}
