"""Alert rules on a real hub: transitions as events, MQTT publishes, history and webhooks; rules
over REST; no second firing across a restart."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iothub.hub import outbox
from iothub.hub.ingest import now_ms
from iothub.hub.registry import Role, Scope
from iothub.runner import Running, serve
from tests.bridge.receiver import receiver
from tests.bridge.sse_client import open_stream
from tests.conftest import (
    WAIT_S,
    EventWaiter,
    device_secret,
    hub_settings,
    mqtt_client,
    service_client,
    telemetry,
    unique_id,
)

HOT = {"kind": "metric", "name": "hot", "metric": "temperature", "op": ">", "threshold": 30, "clear": 28}
WEBHOOKS = {"allow_private_targets": True, "retry_schedule_s": [0.2], "poll_s": 0.2}


@pytest.fixture
async def alerting(tmp_path: Path) -> AsyncIterator[tuple[Running, httpx.AsyncClient, EventWaiter]]:
    async with serve(hub_settings(tmp_path / "data", rules=[HOT], webhooks=WEBHOOKS)) as running:
        headers = {"Authorization": f"Bearer {running.hub.first_token}"}
        base = f"http://{running.address('http')}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_S, headers=headers) as http:
            yield running, http, EventWaiter(running.hub.bus.subscribe("test"))


def alert_of(events: EventWaiter, rule: str, device_id: str, state: str) -> Any:
    return events.until(
        lambda e: e.type == "alert" and e.device_id == device_id and e.data["rule"] == rule and e.data["state"] == state
    )


async def test_a_crossing_fires_once_and_resolves_past_the_clear_value(
    alerting: tuple[Running, httpx.AsyncClient, EventWaiter],
) -> None:
    hub, http, events = alerting
    device_id = unique_id("alert")
    async with receiver() as hook:
        answer = await http.post(
            "/api/v1/webhooks", json={"url": hook.url, "events": ["alert.firing", "alert.resolved"]}
        )
        assert answer.status_code == 201, answer.text
        async with (
            service_client(hub, unique_id("watch"), Role.OBSERVER) as watcher,
            mqtt_client(hub, device_id) as dev,
            open_stream(http, params={"types": "alert", "devices": device_id, "last_event_id": "0"}) as stream,
        ):
            await watcher.subscribe(f"hub/alerts/+/{device_id}", qos=1)
            for value in (25, 31, 35, 29):  # 35: still firing, no second firing; 29: above clear, still firing
                await dev.publish(f"devices/{device_id}/telemetry", telemetry({"temperature": value}), qos=1)
            fired = await alert_of(events, "hot", device_id, "firing")
            assert fired.data["value"] == 31
            assert fired.data["metric"] == "temperature"
            await dev.publish(f"devices/{device_id}/telemetry", telemetry({"temperature": 27.5}), qos=1)
            resolved = await alert_of(events, "hot", device_id, "resolved")
            assert resolved.data["value"] == 27.5
            assert resolved.id > fired.id
            streamed = [await stream.next(), await stream.next()]  # the SSE bridge fans alerts out
            assert [(e.event, e.id, e.json["state"]) for e in streamed] == [
                ("alert", str(fired.id), "firing"),
                ("alert", str(resolved.id), "resolved"),
            ]
            published = []
            async with asyncio.timeout(WAIT_S):
                async for message in watcher.messages:
                    assert isinstance(message.payload, bytes)
                    published.append((str(message.topic), json.loads(message.payload)))
                    if len(published) == 2:
                        break
        assert [(t, p["state"], p["value"]) for t, p in published] == [
            (f"hub/alerts/hot/{device_id}", "firing", 31),
            (f"hub/alerts/hot/{device_id}", "resolved", 27.5),
        ]
        history = (await http.get("/api/v1/alerts", params={"rule": "hot", "device": device_id})).json()["alerts"]
        assert [(a["state"], a["value"], a["event_id"]) for a in history] == [
            ("resolved", 27.5, resolved.id),
            ("firing", 31, fired.id),
        ]
        await hook.wait_for(lambda got: len(got) == 2)
        bodies = sorted((r.json() for r in hook.received), key=lambda b: b["data"]["event_id"])
        assert [(b["type"], b["data"]["event_id"], b["data"]["device_id"]) for b in bodies] == [
            ("alert.firing", fired.id, device_id),
            ("alert.resolved", resolved.id, device_id),
        ]
    assert [e for e in events.seen if getattr(e, "type", None) == "alert" and e.device_id == device_id] == [  # type: ignore[union-attr]
        fired,
        resolved,
    ]


async def test_an_offline_rule_over_rest_fires_after_its_time_and_resolves_online(
    alerting: tuple[Running, httpx.AsyncClient, EventWaiter],
) -> None:
    hub, http, events = alerting
    device_id = unique_id("alert")
    rule = {"kind": "offline", "name": "gone", "offline_for_s": 0.3, "select": {"devices": [device_id]}}
    answer = await http.post("/api/v1/rules", json=rule)
    assert answer.status_code == 201, answer.text
    assert answer.json()["source"] == "api"
    async with mqtt_client(hub, device_id):
        await events.status_of(device_id, online=True)
    offline = await events.status_of(device_id, online=False)
    fired = await alert_of(events, "gone", device_id, "firing")
    assert fired.ts - offline.ts >= 300
    async with mqtt_client(hub, device_id):
        await alert_of(events, "gone", device_id, "resolved")
    other = unique_id("alert")  # outside the rule's selector
    async with mqtt_client(hub, other):
        await events.status_of(other, online=True)
    await events.status_of(other, online=False)
    assert (await http.delete("/api/v1/rules/gone")).status_code == 204
    assert "gone" not in [r["name"] for r in (await http.get("/api/v1/rules")).json()["rules"]]
    history = (await http.get("/api/v1/alerts", params={"rule": "gone"})).json()["alerts"]
    assert [(a["device_id"], a["state"]) for a in history] == [(device_id, "resolved"), (device_id, "firing")]


async def test_rules_over_rest_say_what_is_wrong(alerting: tuple[Running, httpx.AsyncClient, EventWaiter]) -> None:
    _, http, _ = alerting
    rules = (await http.get("/api/v1/rules")).json()["rules"]
    assert [(r["name"], r["source"]) for r in rules] == [("hot", "settings")]
    bad = await http.post("/api/v1/rules", json={**HOT, "name": "warm", "clear": 31})
    assert (bad.status_code, bad.json()["error"]) == (
        400,
        "rule: metric: clear 31.0 must not be above threshold 30.0 for >",
    )
    for spec, error in (
        ({"name": "warm"}, "rule: field 'kind': missing (one of metric, offline)"),
        ({"kind": "weird", "name": "warm"}, "rule: field 'kind': 'weird' is not one of metric, offline"),
    ):
        answer = await http.post("/api/v1/rules", json=spec)
        assert (answer.status_code, answer.json()["error"]) == (400, error)
    taken = await http.post("/api/v1/rules", json=HOT)
    assert (taken.status_code, taken.json()["error"]) == (409, "rule 'hot' is defined in the settings file")
    assert (await http.post("/api/v1/rules", json={**HOT, "name": "warm"})).status_code == 201
    again = await http.post("/api/v1/rules", json={**HOT, "name": "warm"})
    assert (again.status_code, again.json()["error"]) == (409, "rule 'warm' exists already (remove it first)")
    gone = await http.delete("/api/v1/rules/nope")
    assert (gone.status_code, gone.json()["error"]) == (404, "no rule named 'nope'")
    fixed = await http.delete("/api/v1/rules/hot")
    assert (fixed.status_code, fixed.json()["error"]) == (
        400,
        "rule 'hot' is defined in the settings file; remove it there",
    )


async def test_a_firing_alert_does_not_fire_again_after_a_restart(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", rules=[HOT])
    device_id = unique_id("alert")
    for value, expected in ((31, "firing"), (33, None), (20, "resolved")):
        async with serve(settings) as hub:
            events = EventWaiter(hub.hub.bus.subscribe("test"))
            async with mqtt_client(hub, device_id) as dev:
                await dev.publish(f"devices/{device_id}/telemetry", telemetry({"temperature": value}), qos=1)
                await events.telemetry_from(device_id)
                marker = unique_id("marker")  # a later crossing by another device: evaluation got this far
                async with mqtt_client(hub, marker) as other:
                    await other.publish(f"devices/{marker}/telemetry", telemetry({"temperature": 99}), qos=1)
                await alert_of(events, "hot", marker, "firing")
            alerts = [e for e in events.seen if getattr(e, "type", None) == "alert" and e.device_id == device_id]  # type: ignore[union-attr]
            assert [e.data["state"] for e in alerts] == ([expected] if expected else [])  # type: ignore[union-attr]


async def test_changing_or_removing_a_firing_rule_resolves_its_alerts(
    alerting: tuple[Running, httpx.AsyncClient, EventWaiter],
) -> None:
    hub, http, events = alerting
    device_id = unique_id("alert")
    warm = {**HOT, "name": "warm", "threshold": 40, "clear": None, "select": {"devices": [device_id]}}
    assert (await http.post("/api/v1/rules", json=warm)).status_code == 201
    async with mqtt_client(hub, device_id) as dev:
        await dev.publish(f"devices/{device_id}/telemetry", telemetry({"temperature": 45}), qos=1)
        await alert_of(events, "warm", device_id, "firing")
        changed = {**warm, "threshold": 50}  # changed in place, as another process may do it
        conn = outbox.connect(hub.hub.settings.data_dir / "iothub.db")
        try:
            conn.execute("UPDATE alert_rules SET spec = ? WHERE name = 'warm'", (json.dumps(changed),))
        finally:
            conn.close()
        resolved = await alert_of(events, "warm", device_id, "resolved")
        assert (resolved.data["reason"], resolved.data["value"]) == ("rule changed", 45)
        await dev.publish(f"devices/{device_id}/telemetry", telemetry({"temperature": 55}), qos=1)
        await alert_of(events, "warm", device_id, "firing")  # the changed rule fires afresh
        assert (await http.delete("/api/v1/rules/warm")).status_code == 204
        removed = await alert_of(events, "warm", device_id, "resolved")
        assert (removed.data["reason"], removed.data["value"]) == ("rule removed", 55)
    history = (await http.get("/api/v1/alerts", params={"rule": "warm"})).json()["alerts"]
    assert [(a["state"], a.get("reason")) for a in history] == [
        ("resolved", "rule removed"), ("firing", None), ("resolved", "rule changed"), ("firing", None)
    ]  # fmt: skip


async def test_an_alert_of_a_rule_removed_while_stopped_resolves_at_start(tmp_path: Path) -> None:
    device_id = unique_id("alert")
    async with serve(hub_settings(tmp_path / "data", rules=[HOT])) as hub:
        events = EventWaiter(hub.hub.bus.subscribe("test"))
        async with mqtt_client(hub, device_id) as dev:
            await dev.publish(f"devices/{device_id}/telemetry", telemetry({"temperature": 31}), qos=1)
            await alert_of(events, "hot", device_id, "firing")
    async with serve(hub_settings(tmp_path / "data")) as hub:  # the rule is gone from the settings
        history: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT_S):
            while len(history) < 2:  # bounded by the timeout; the transition is committed at start
                history = await asyncio.to_thread(hub.hub.rulebook.history, "hot", device_id)
                await asyncio.sleep(0.05)
    assert [(a["state"], a.get("reason"), a["value"]) for a in history] == [
        ("resolved", "rule removed", 31), ("firing", None, 31)
    ]  # fmt: skip


def consumers(hub: Running) -> list[str]:
    return sorted(sub.name for sub in hub.hub.bus._subs)


async def test_without_rules_the_evaluator_does_not_read_the_event_bus(tmp_path: Path) -> None:
    async with serve(hub_settings(tmp_path / "data")) as hub:
        headers = {"Authorization": f"Bearer {hub.hub.first_token}"}
        async with httpx.AsyncClient(base_url=f"http://{hub.address('http')}", timeout=WAIT_S, headers=headers) as http:
            assert "alerts" not in consumers(hub)  # telemetry costs it nothing
            events = EventWaiter(hub.hub.bus.subscribe("test"))
            device_id = unique_id("alert")
            assert (
                await http.post("/api/v1/rules", json={**HOT, "select": {"devices": [device_id]}})
            ).status_code == 201
            assert "alerts" in consumers(hub)
            async with mqtt_client(hub, device_id) as dev:
                await dev.publish(f"devices/{device_id}/telemetry", telemetry({"temperature": 31}), qos=1)
                await alert_of(events, "hot", device_id, "firing")
            assert (await http.delete("/api/v1/rules/hot")).status_code == 204
            await alert_of(events, "hot", device_id, "resolved")
            assert "alerts" not in consumers(hub)


BAD_SPEC = json.dumps({"kind": "metric", "name": "x11", "metric": "t", "op": ">", "threshold": None})


def store_bad_rule(data_dir: Path) -> None:
    """A stored rule that no longer validates, as an older version (or a hand edit) may leave one."""
    conn = outbox.connect(data_dir / "iothub.db")
    try:
        conn.execute("INSERT INTO alert_rules (name, spec, created) VALUES ('x11', ?, 0)", (BAD_SPEC,))
    finally:
        conn.close()


async def test_a_non_finite_threshold_over_rest_is_refused_and_not_stored(
    alerting: tuple[Running, httpx.AsyncClient, EventWaiter],
) -> None:
    _, http, _ = alerting
    for number in ("NaN", "Infinity", "-Infinity"):
        body = f'{{"kind": "metric", "name": "x11", "metric": "t", "op": ">", "threshold": {number}}}'
        bad = await http.post("/api/v1/rules", content=body, headers={"content-type": "application/json"})
        assert (bad.status_code, bad.json()["error"]) == (
            400,
            "rule: metric.threshold: Input should be a finite number",
        )
    listed = (await http.get("/api/v1/rules")).json()
    assert ([r["name"] for r in listed["rules"]], listed["invalid"]) == (["hot"], [])


async def test_a_bad_stored_rule_is_logged_once_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    async with serve(hub_settings(data, rules=[HOT])) as hub:  # the hub is running when the rule appears
        store_bad_rule(data)
        await hub.hub.alerts.reload()
        await hub.hub.alerts.reload()
    async with serve(hub_settings(data, rules=[HOT])) as hub:  # and it starts with it
        events = EventWaiter(hub.hub.bus.subscribe("test"))
        device_id = unique_id("alert")
        async with mqtt_client(hub, device_id) as dev:  # the other rules still work
            await dev.publish(f"devices/{device_id}/telemetry", telemetry({"temperature": 31}), qos=1)
            await alert_of(events, "hot", device_id, "firing")
        token = await asyncio.to_thread(hub.hub.registry.create_token, Scope.ADMIN, "test")
        headers = {"Authorization": f"Bearer {token[1]}"}
        async with httpx.AsyncClient(base_url=f"http://{hub.address('http')}", timeout=WAIT_S, headers=headers) as http:
            listed = (await http.get("/api/v1/rules")).json()
            assert [r["name"] for r in listed["rules"]] == ["hot"]
            assert [(b["name"], b["invalid"]) for b in listed["invalid"]] == [
                ("x11", "rule: metric: op '>' takes a threshold and no range")
            ]
            assert (await http.delete("/api/v1/rules/x11")).status_code == 204
            assert (await http.get("/api/v1/rules")).json()["invalid"] == []
    logged = [r.getMessage() for r in caplog.records if "x11" in r.getMessage()]
    assert (
        logged
        == [
            "alert rule 'x11' is invalid and skipped: rule: metric: op '>' takes a threshold and no range;"
            " remove it: iothub rules remove x11 (or DELETE /api/v1/rules/x11)"
        ]
        * 2
    )  # once by each hub


async def test_an_offline_rule_fires_for_a_registered_device_that_never_connected(
    alerting: tuple[Running, httpx.AsyncClient, EventWaiter],
) -> None:
    hub, http, events = alerting
    never, later = unique_id("never"), unique_id("later")
    device_secret(hub, never)  # registered, as an operator would
    added = now_ms()
    rule = {"kind": "offline", "name": "gone", "offline_for_s": 0.3, "select": {"devices": [never, later]}}
    assert (await http.post("/api/v1/rules", json=rule)).status_code == 201
    fired = await alert_of(events, "gone", never, "firing")
    assert fired.ts - added >= 300  # counted from when the rule was added
    assert fired.data["offline_since"] is None
    registered = now_ms()
    device_secret(hub, later)  # registered after the rule: counted from then
    assert (await alert_of(events, "gone", later, "firing")).ts - registered >= 300
    async with mqtt_client(hub, never):
        await alert_of(events, "gone", never, "resolved")


async def test_an_offline_rule_counts_from_the_start_for_a_device_offline_before_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "iothub.hub.core")
    data = tmp_path / "data"
    device_id, never = unique_id("alert"), unique_id("never")
    async with serve(hub_settings(data)) as hub:
        device_secret(hub, never)  # registered, as an operator would
        events = EventWaiter(hub.hub.bus.subscribe("test"))
        async with mqtt_client(hub, device_id):
            await events.status_of(device_id, online=True)
        await events.status_of(device_id, online=False)
    gone = {"kind": "offline", "name": "gone", "offline_for_s": 0.5}
    started = now_ms()
    async with serve(hub_settings(data, rules=[gone])) as hub:
        events = EventWaiter(hub.hub.bus.subscribe("test"))
        for device in (device_id, never):
            fired = await alert_of(events, "gone", device, "firing")
            assert fired.ts - started >= 500  # not at once: the hub saw the device offline only from its start
    started_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hub started")]
    assert [line.partition(";")[0] for line in started_lines] == [
        "hub started: 0 devices registered, 0 seen in earlier runs",
        "hub started: 2 devices registered, 1 seen in earlier runs",  # one never connected
    ]
