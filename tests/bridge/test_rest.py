"""The HTTP API against a real hub on loopback, with a real HTTP client."""

from __future__ import annotations

import time

import httpx
import pytest

from iothub.runner import Running
from tests.conftest import EventWaiter, mqtt_client, telemetry, unique_id

T0 = (int(time.time() * 1000) // 60_000 - 10) * 60_000  # ten minutes ago, on a minute boundary


async def _seed(hub: Running, events: EventWaiter) -> str:
    """A device with temperature 10, 20, 30, 40 at T0+0/20/40/60 s, a flag and a mode."""
    device = unique_id("rest")
    async with mqtt_client(hub, device) as client:
        for i, temp in enumerate([10, 20, 30, 40]):
            metrics = {"temperature": temp, "door": i % 2 == 1, "mode": f"m{i}"}
            await client.publish(f"devices/{device}/telemetry", telemetry(metrics, ts=T0 + i * 20_000, seq=i), qos=1)
        await events.until(lambda e: e.device_id == device and e.data.get("seq") == 3)
    await events.status_of(device, online=False)  # presence followed its disconnect
    return device


async def test_health_and_metrics(http: httpx.AsyncClient) -> None:
    health = (await http.get("/healthz")).json()
    assert health["status"] == "ok"
    metrics = await http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "iothub_messages_stored_total",
        "iothub_queue_depth",
        "iothub_store_batch_seconds_bucket",
        "iothub_devices",
    ):
        assert name in metrics.text


async def test_device_list_and_detail(hub: Running, events: EventWaiter, http: httpx.AsyncClient) -> None:
    device = await _seed(hub, events)
    listing = (await http.get("/api/v1/devices")).json()
    assert listing["count"] == 1
    view = listing["devices"][0]
    assert view["id"] == device
    assert (view["online"], view["reason"]) == (False, "clean_disconnect")
    assert view["latest"]["temperature"]["value"] == 40
    assert view["latest"]["door"]["value"] is True
    assert view["rejected_total"] == 0
    assert view["messages"] == 4
    assert (await http.get(f"/api/v1/devices/{device}")).json() == view
    assert (await http.get("/api/v1/devices", params={"online": "true"})).json()["count"] == 0


async def test_raw_telemetry(hub: Running, events: EventWaiter, http: httpx.AsyncClient) -> None:
    device = await _seed(hub, events)
    body = (await http.get(f"/api/v1/devices/{device}/telemetry", params={"metric": "temperature"})).json()
    assert body["series"] == {"temperature": [[T0 + i * 20_000, v] for i, v in enumerate([10, 20, 30, 40])]}
    both = await http.get(
        f"/api/v1/devices/{device}/telemetry",
        params=[("metric", "door"), ("metric", "mode"), ("from", str(T0 + 20_000)), ("limit", "2")],
    )
    series = both.json()["series"]  # the newest 2 of the 3 in the range, oldest first; the cut is said
    assert series["door"] == [[T0 + 40_000, False], [T0 + 60_000, True]]
    assert series["mode"] == [[T0 + 40_000, "m2"], [T0 + 60_000, "m3"]]
    assert both.json()["truncated"] == ["door", "mode"]
    everything = (await http.get(f"/api/v1/devices/{device}/telemetry")).json()
    assert sorted(everything["series"]) == ["door", "mode", "temperature"]
    assert everything["truncated"] == []
    buckets = (await http.get(f"/api/v1/devices/{device}/telemetry", params={"step": "20s", "limit": "3"})).json()
    assert [t for t, _ in buckets["series"]["temperature"]] == [T0 + 20_000, T0 + 40_000, T0 + 60_000]
    assert "temperature" in buckets["truncated"]


@pytest.mark.parametrize(
    ("agg", "expected"),
    [("avg", [20, 40]), ("min", [10, 40]), ("max", [30, 40]), ("last", [30, 40])],
)
async def test_downsampled_telemetry(
    hub: Running, events: EventWaiter, http: httpx.AsyncClient, agg: str, expected: list[float]
) -> None:
    device = await _seed(hub, events)
    body = (
        await http.get(
            f"/api/v1/devices/{device}/telemetry",
            params={"metric": "temperature", "step": "1m", "agg": agg, "from": str(T0), "to": "now"},
        )
    ).json()
    assert body["step_ms"] == 60_000
    assert body["series"]["temperature"] == [[T0, expected[0]], [T0 + 60_000, expected[1]]]


async def test_downsampled_strings_and_flags(hub: Running, events: EventWaiter, http: httpx.AsyncClient) -> None:
    device = await _seed(hub, events)
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("metric", "mode"),
        ("metric", "door"),
        ("step", "1m"),
        ("from", str(T0)),
    ]
    series = (await http.get(f"/api/v1/devices/{device}/telemetry", params=params)).json()["series"]
    assert series["mode"] == [[T0, "m2"], [T0 + 60_000, "m3"]]  # strings can only be 'last'
    assert series["door"] == [[T0, 1 / 3], [T0 + 60_000, 1.0]]  # the share of time a flag was true


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"step": "fast"}, 400, "parameter 'step'"),
        ({"agg": "median", "step": "1m"}, 400, "parameter 'agg': 'median' is not one of avg, min, max, last, count"),
        ({"from": "now", "to": "-1h"}, 400, "'from' is after 'to'"),
        ({"from": "last week"}, 400, "parameter 'from'"),
        ({"limit": "0"}, 400, "parameter 'limit': 0 is outside"),
        ({"step": "1ms", "from": "-1d"}, 400, "more than 100000 buckets"),
        ({"metric": "pressure"}, 404, "has no metric 'pressure'"),
        ({"metrics": "temperature"}, 400, "unknown parameter 'metrics' (did you mean 'metric'?)"),
        ({"form": "-1h"}, 400, "unknown parameter 'form' (did you mean 'from'?)"),
    ],
)
async def test_bad_queries_say_what_is_wrong(
    hub: Running,
    events: EventWaiter,
    http: httpx.AsyncClient,
    params: dict[str, str],
    status: int,
    message: str,
) -> None:
    device = await _seed(hub, events)
    response = await http.get(f"/api/v1/devices/{device}/telemetry", params=params)
    assert response.status_code == status
    assert message in response.json()["error"]


async def test_unknown_and_invalid_devices(http: httpx.AsyncClient) -> None:
    missing = await http.get("/api/v1/devices/nobody")
    assert (missing.status_code, missing.json()) == (404, {"error": "no device 'nobody'"})
    assert (await http.get("/api/v1/devices/nobody/telemetry")).status_code == 404
    bad = await http.get("/api/v1/devices/a%20b")
    assert bad.status_code == 400
    assert "breaks the rule" in bad.json()["error"]
    assert (await http.get("/api/v1/devices", params={"online": "maybe"})).status_code == 400
    assert (await http.get("/api/v1/nothing")).json() == {"error": "Not Found"}


async def test_telemetry_of_unknown_and_silent_devices(hub: Running, http: httpx.AsyncClient) -> None:
    unknown = await http.get("/api/v1/devices/nope/telemetry")
    assert (unknown.status_code, unknown.json()) == (404, {"error": "no device 'nope'"})
    silent = unique_id("silent")
    hub.hub.registry.add_device(silent)  # registered, never connected
    empty = await http.get(f"/api/v1/devices/{silent}/telemetry")
    assert empty.status_code == 200
    assert (empty.json()["device_id"], empty.json()["series"]) == (silent, {})
    named = await http.get(f"/api/v1/devices/{silent}/telemetry", params={"metric": "temperature"})
    assert (named.status_code, named.json()) == (404, {"error": f"device '{silent}' has no metric 'temperature'"})


async def test_dashboard_files_are_revalidated(http: httpx.AsyncClient) -> None:
    """After an upgrade a browser must not run the new page with modules cached from the old one."""
    page = await http.get("/")
    assert page.headers["cache-control"] == "no-cache"
    module = await http.get("/static/app.js")
    assert module.status_code == 200
    assert module.headers["cache-control"] == "no-cache"
    again = await http.get("/static/app.js", headers={"If-None-Match": module.headers["etag"]})
    assert again.status_code == 304
