"""The InfluxDB store's write path against a real ``/api/v2/write`` server (VictoriaMetrics, started
by the test), read back through its export API: exact values, tags and timestamps. Events and device
state stay in SQLite, ids and all."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from iothub.hub.errors import StoreError
from iothub.hub.settings import InfluxSettings
from iothub.hub.store.base import Batch, PendingEvent, Point
from iothub.hub.store.influx import InfluxStore
from iothub.hub.store.sqlite import SqliteStore
from iothub.runner import serve
from tests.conformance.brokers import _free_port
from tests.conftest import EventWaiter, hub_settings, mqtt_client, telemetry, unique_id
from tests.victoria import exported, victoria_metrics

NOW = 1_795_000_000_000  # inside VictoriaMetrics' retention window of the test server


def influx(url: str, **overrides: object) -> InfluxSettings:
    return InfluxSettings.model_validate({"url": url, "org": "iothub", "bucket": "iot", "token": SecretStr("t"),
                                          **overrides})  # fmt: skip


def by_series(rows: list[dict[str, object]]) -> dict[tuple[tuple[str, str], ...], tuple[list[float], list[int]]]:
    out = {}
    for row in rows:
        metric = row["metric"]
        assert isinstance(metric, dict)
        out[tuple(sorted(metric.items()))] = (row["values"], row["timestamps"])
    return out  # type: ignore[return-value]


async def test_points_arrive_with_exact_values_tags_and_timestamps(tmp_path: Path) -> None:
    labels = {"d-1": {"site": "berlin hall", "owner": "x"}, "d-2": {}}
    async with victoria_metrics(tmp_path) as url:
        store = InfluxStore(influx(url, tag_labels=("site",)), SqliteStore(tmp_path / "events.db"), labels.__getitem__)
        await store.open()
        try:
            batch = Batch(
                points=[
                    Point("d-1", "temperature", NOW, 21.5),
                    Point("d-1", "door_open", NOW, True),
                    Point("d-2", "temperature", NOW + 7, -3),
                    Point("d-1", "temperature", NOW + 1000, 22.25),
                ],
                events=[PendingEvent("telemetry", NOW, "d-1", {"seq": 1, "metrics": {"temperature": 21.5}})],
                devices={"d-1": {"online": True}},
            )
            events = await store.write(batch)
            assert [(e.id, e.device_id) for e in events] == [(1, "d-1")]
            assert await store.events_after(0, 10) == events
            assert await store.event_bounds() == (1, 1)
            series = by_series(await exported(url, '{__name__=~"telemetry_.*"}'))
        finally:
            await store.close()
    berlin = (("device_id", "d-1"), ("site", "berlin hall"))
    assert series == {
        (("__name__", "telemetry_temperature"), *berlin): ([21.5, 22.25], [NOW, NOW + 1000]),
        (("__name__", "telemetry_door_open"), *berlin): ([1], [NOW]),
        (("__name__", "telemetry_temperature"), ("device_id", "d-2")): ([-3], [NOW + 7]),
    }


async def test_a_server_that_cannot_be_reached_is_a_store_error_naming_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    store = InfluxStore(influx(url, timeout_s=2), SqliteStore(tmp_path / "events.db"), lambda _: {})
    await store.open()
    try:
        with pytest.raises(StoreError, match=rf"^cannot write to InfluxDB at {url}: "):
            await store.write(Batch(points=[Point("d", "t", NOW, 1)], events=[PendingEvent("telemetry", NOW, "d", {})]))
        assert await store.event_bounds() == (0, 0)  # the events wait for the points: nothing committed
    finally:
        await store.close()


async def test_the_hub_stores_device_telemetry_in_influxdb(tmp_path: Path) -> None:
    device = unique_id()
    async with victoria_metrics(tmp_path) as url:
        store = {"backend": "influxdb", "influx": {"url": url, "org": "iothub", "bucket": "iot", "measurement": "m"}}
        async with serve(hub_settings(tmp_path / "data", store=store)) as running:
            events = EventWaiter(running.hub.bus.subscribe("test"))
            async with mqtt_client(running, device) as client:
                for seq in range(3):
                    payload = telemetry({"t": 20 + seq / 4, "on": seq % 2 == 1}, seq=seq, ts=NOW + seq)
                    await client.publish(f"devices/{device}/telemetry", payload, qos=1)
            for _ in range(3):
                await events.telemetry_from(device)
        series = by_series(await exported(url, f'{{device_id="{device}"}}'))
    assert series == {
        (("__name__", "m_t"), ("device_id", device)): ([20.0, 20.25, 20.5], [NOW, NOW + 1, NOW + 2]),
        (("__name__", "m_on"), ("device_id", device)): ([0, 1, 0], [NOW, NOW + 1, NOW + 2]),
    }
