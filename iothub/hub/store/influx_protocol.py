"""What the InfluxDB store sends, built by pure functions: line protocol for writes, Flux for queries.

Line protocol (``/api/v2/write``, precision ms): one line per device and timestamp,
``{measurement},device_id={id}[,{label}={value}...] {metric}={value}[,...] {ts}``. Numbers are
written as floats (a metric that is sometimes 3 and sometimes 3.5 must not change field type),
booleans as ``true``/``false``, strings quoted; NaN and infinities, which InfluxDB refuses, are left
out. Measurement, tag and field names and values are escaped as the protocol says, so no id, label
or metric name can add a tag, a field or a line.

Flux: every id, metric name, bucket and measurement goes in as a string literal through
:func:`flux_string` (backslash, quote and ``${`` escaped), times as RFC 3339 literals built from
integers, so nothing a client sends can change a query's shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

from iothub.hub.store.base import Agg, Point, Value

# Empty windows are left out (``createEmpty: false``), as the SQLite store has no row for them.
_FLUX_FN = {Agg.AVG: "mean", Agg.MIN: "min", Agg.MAX: "max", Agg.LAST: "last", Agg.COUNT: "count"}
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\\": "\\\\", "\n": r"\n"})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\\": "\\\\", "\n": r"\n"})


def escape_key(text: str) -> str:
    """A tag key, tag value or field key: comma, equals sign and space escaped."""
    return text.translate(_KEY_ESCAPES)


def escape_measurement(text: str) -> str:
    return text.translate(_MEASUREMENT_ESCAPES)


def field_value(value: Value) -> str | None:
    """A field's value in line protocol; None for what InfluxDB cannot store (NaN, infinity)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    number = float(value)
    if not math.isfinite(number):
        return None
    return repr(number)


def line_protocol(
    points: Iterable[Point], measurement: str, tags_of: Callable[[str], Mapping[str, str]] = lambda _: {}
) -> list[str]:
    """The lines for ``points``: one per (device, timestamp), its metrics as fields, in first-seen order."""
    grouped: dict[tuple[str, int], list[str]] = {}
    for p in points:
        value = field_value(p.value)
        if value is not None:
            grouped.setdefault((p.device_id, p.ts), []).append(f"{escape_key(p.metric)}={value}")
    head = escape_measurement(measurement)
    tag_cache: dict[str, str] = {}
    lines = []
    for (device_id, ts), fields in grouped.items():
        tags = tag_cache.get(device_id)
        if tags is None:
            extra = sorted(tags_of(device_id).items())
            pairs = [("device_id", device_id), *((k, v) for k, v in extra if v and k != "device_id")]
            tags = tag_cache[device_id] = ",".join(f"{escape_key(k)}={escape_key(v)}" for k, v in pairs)
        lines.append(f"{head},{tags} {','.join(fields)} {ts}")
    return lines


def flux_string(text: str) -> str:
    """``text`` as a Flux string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${").replace("\n", "\\n")
    return f'"{escaped}"'


def flux_time(ms: int) -> str:
    """An RFC 3339 time literal (UTC, millisecond precision) for epoch milliseconds."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def history_query(
    bucket: str,
    measurement: str,
    device_id: str,
    metric: str,
    start_ms: int,
    end_ms: int,
    step_ms: int | None,
    agg: Agg,
    limit: int,
) -> str:
    """One metric's history: the newest ``limit + 1`` points (or ``step_ms`` buckets, labelled by their
    start) of ``[start_ms, end_ms]``, newest first, as ``_time`` and ``_value`` columns."""
    lines = [
        f"from(bucket: {flux_string(bucket)})",
        f"  |> range(start: {flux_time(start_ms)}, stop: {flux_time(end_ms + 1)})",
        f"  |> filter(fn: (r) => r._measurement == {flux_string(measurement)}"
        f" and r.device_id == {flux_string(device_id)} and r._field == {flux_string(metric)})",
    ]
    if step_ms is not None:
        lines.append(
            f'  |> aggregateWindow(every: {int(step_ms)}ms, fn: {_FLUX_FN[agg]}, createEmpty: false, timeSrc: "_start")'
        )
    lines += [
        '  |> sort(columns: ["_time"], desc: true)',
        f"  |> limit(n: {int(limit) + 1})",
        '  |> keep(columns: ["_time", "_value"])',
    ]
    return "\n".join(lines)


def metrics_query(bucket: str, measurement: str, device_id: str, lookback_days: int = 3650) -> str:
    """The field (metric) names of ``device_id``, one per row in ``_value``."""
    return "\n".join(
        [
            'import "influxdata/influxdb/schema"',
            f"schema.fieldKeys(bucket: {flux_string(bucket)},"
            f" predicate: (r) => r._measurement == {flux_string(measurement)}"
            f" and r.device_id == {flux_string(device_id)}, start: -{int(lookback_days)}d)",
        ]
    )
