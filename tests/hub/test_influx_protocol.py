"""Line protocol and Flux as the InfluxDB store builds them: pure functions, no server."""

from __future__ import annotations

import re

from iothub.hub.store.base import Agg, Point
from iothub.hub.store.influx_protocol import (
    escape_key,
    field_value,
    flux_string,
    flux_time,
    history_query,
    line_protocol,
    metrics_query,
)


def test_one_line_per_device_and_timestamp_with_every_metric_as_a_field() -> None:
    points = [
        Point("d1", "temperature", 1000, 21.5),
        Point("d1", "count", 1000, 3),
        Point("d1", "door_open", 1000, False),
        Point("d1", "mode", 1000, 'eco "max"\\'),
        Point("d2", "temperature", 1000, 20),
        Point("d1", "temperature", 2000, 22),
    ]
    labels = {"d1": {"site": "berlin hall", "zone": "a=b,c"}, "d2": {}}
    assert line_protocol(points, "telemetry", lambda d: labels[d]) == [
        "telemetry,device_id=d1,site=berlin\\ hall,zone=a\\=b\\,c temperature=21.5,count=3.0,door_open=false,"
        'mode="eco \\"max\\"\\\\" 1000',
        "telemetry,device_id=d2 temperature=20.0 1000",
        "telemetry,device_id=d1,site=berlin\\ hall,zone=a\\=b\\,c temperature=22.0 2000",
    ]


def test_names_cannot_add_tags_fields_or_lines() -> None:
    hostile = "x,evil=1 other=2\nnext"
    line = line_protocol([Point("d", hostile, 5, 1)], "m e,as")[0]
    assert line == "m\\ e\\,as,device_id=d x\\,evil\\=1\\ other\\=2\\nnext=1.0 5"
    assert "\n" not in line
    assert escape_key("a b=c,d") == "a\\ b\\=c\\,d"


def test_values_influxdb_cannot_hold_are_left_out() -> None:
    assert field_value(float("nan")) is None
    assert field_value(float("inf")) is None
    assert field_value(True) == "true"
    assert field_value(7) == "7.0"  # one field type for a metric that is sometimes 7 and sometimes 7.5
    assert line_protocol([Point("d", "x", 1, float("nan"))], "m") == []
    assert line_protocol([Point("d", "x", 1, float("nan")), Point("d", "y", 1, 2.5)], "m") == ["m,device_id=d y=2.5 1"]


def test_labels_never_replace_the_device_id_tag() -> None:
    line = line_protocol([Point("d", "x", 1, 1)], "m", lambda _: {"device_id": "other", "site": ""})[0]
    assert line == "m,device_id=d x=1.0 1"


def test_flux_strings_are_escaped() -> None:
    assert flux_string('a"b\\c${x}\nd') == '"a\\"b\\\\c\\${x}\\nd"'
    assert flux_time(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert flux_time(5) == "1970-01-01T00:00:00.005Z"


def test_history_query_of_raw_points() -> None:
    flux = history_query("iot", "telemetry", "d-1", "temperature", 1_700_000_000_000, 1_700_000_060_000, None,
                         Agg.AVG, 100)  # fmt: skip
    assert flux == "\n".join(
        [
            'from(bucket: "iot")',
            "  |> range(start: 2023-11-14T22:13:20.000Z, stop: 2023-11-14T22:14:20.001Z)",
            '  |> filter(fn: (r) => r._measurement == "telemetry" and r.device_id == "d-1"'
            ' and r._field == "temperature")',
            '  |> sort(columns: ["_time"], desc: true)',
            "  |> limit(n: 101)",
            '  |> keep(columns: ["_time", "_value"])',
        ]
    )


def test_history_query_in_buckets_names_the_aggregate() -> None:
    assert set(Agg) == {Agg.AVG, Agg.MIN, Agg.MAX, Agg.LAST, Agg.COUNT}, "a new aggregate needs a case here"
    for agg, fn in [(Agg.AVG, "mean"), (Agg.MIN, "min"), (Agg.MAX, "max"), (Agg.LAST, "last"), (Agg.COUNT, "count")]:
        flux = history_query("b", "m", "d", "t", 0, 1000, 60_000, agg, 10)
        assert f'aggregateWindow(every: 60000ms, fn: {fn}, createEmpty: false, timeSrc: "_start")' in flux


def test_a_hostile_id_stays_inside_its_string_literal() -> None:
    hostile = '") |> drop() //${danger}'
    flux = history_query("b", "m", hostile, hostile, 0, 1, None, Agg.LAST, 1)
    filter_line = flux.splitlines()[2]
    assert filter_line.count('r.device_id == "\\") |> drop() //\\${danger}"') == 1
    # Outside string literals, the query has exactly the shape of an ordinary one.
    shape = re.sub(r'"(?:[^"\\]|\\.)*"', '""', flux)
    assert shape == re.sub(r'"(?:[^"\\]|\\.)*"', '""', history_query("b", "m", "d", "t", 0, 1, None, Agg.LAST, 1))


def test_metrics_query_asks_for_the_device_field_keys() -> None:
    assert metrics_query("b", "m", 'd"x') == (
        'import "influxdata/influxdb/schema"\n'
        'schema.fieldKeys(bucket: "b", predicate: (r) => r._measurement == "m" and r.device_id == "d\\"x", '
        "start: -3650d)"
    )
