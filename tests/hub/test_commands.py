"""Commands and the device twin, end to end through the broker and the REST API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from iothub.hub.commands import BadCommand, CommandTimeout, DeviceOffline, UnknownDevice
from iothub.hub.registry import Role, Scope
from iothub.hub.twin import merge_patch
from iothub.runner import Running, serve
from iothub.testing import ChannelClient, HubUnderTest
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


@asynccontextmanager
async def answering_device(
    hub: Running, events: EventWaiter, device: str, answer: bool = True
) -> AsyncIterator[aiomqtt.Client]:
    """A device that is online and (if ``answer``) replies {"echo": args} to every command."""
    async with mqtt_client(hub, device) as client:
        await client.subscribe(f"devices/{device}/commands/+", qos=1)
        await client.publish(f"devices/{device}/status", b'{"online": true}', qos=1)
        await events.status_of(device, online=True)

        closing = asyncio.Event()

        async def respond() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                request = json.loads(message.payload)
                reply = {"id": request["id"], "ok": True, "result": {"echo": request["args"]}}
                await client.publish(f"devices/{device}/responses", json.dumps(reply), qos=1)
                # On Python 3.11 a cancel that lands as the PUBACK arrives is lost inside aiomqtt's
                # publish (asyncio.wait_for returns the result): end here instead of waiting for more.
                if closing.is_set():
                    return

        task = asyncio.create_task(respond()) if answer else None
        try:
            yield client
        finally:
            if task is not None:
                closing.set()
                task.cancel()
                async with asyncio.timeout(WAIT_S):  # a device that will not stop fails here, not at pytest's timeout
                    await asyncio.gather(task, return_exceptions=True)


async def test_a_command_round_trip(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with answering_device(hub, events, device):
        result = await hub.hub.commands.send(device, "blink", {"times": 3})
    assert (result.ok, result.result, result.name) == (True, {"echo": {"times": 3}}, "blink")
    assert result.latency_ms < WAIT_S * 1000
    event = await events.until(lambda e: e.type == "command_result" and e.device_id == device)
    assert event.data["request_id"] == result.id
    assert event.json_with(event.data).startswith(b'{"id":%d,' % event.id)  # the event id stays the event's


async def test_command_errors_are_distinct(hub: Running, events: EventWaiter) -> None:
    send = hub.hub.commands.send
    with pytest.raises(UnknownDevice, match="no device 'ghost'"):
        await send("ghost", "x", {})
    device = unique_id()
    async with answering_device(hub, events, device, answer=False):
        with pytest.raises(CommandTimeout, match=f"device '{device}' did not answer 'x' within 0.2 s"):
            await send(device, "x", {}, timeout_s=0.2)
        with pytest.raises(BadCommand, match="command name"):
            await send(device, "a/b", {})
        with pytest.raises(BadCommand, match="timeout"):
            await send(device, "x", {}, timeout_s=0)
    await events.status_of(device, online=False)
    with pytest.raises(DeviceOffline, match=r"is offline since .*clean_disconnect.*queue=true"):
        await send(device, "x", {})
    hub.hub.registry.set_enabled(device, False)
    with pytest.raises(DeviceOffline, match="disabled"):
        await send(device, "x", {})


async def test_a_queued_command_waits_for_the_device(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as client:
        await client.publish(f"devices/{device}/status", b'{"online": true}', qos=1)
        await events.status_of(device, online=True)
    await events.status_of(device, online=False)
    pending = asyncio.create_task(hub.hub.commands.send(device, "sync", {"full": True}, timeout_s=WAIT_S, queue=True))
    await asyncio.sleep(0)
    assert not pending.done()
    async with answering_device(hub, events, device):
        result = await pending
    assert result.result == {"echo": {"full": True}}


async def test_responses_from_the_wrong_device_are_refused(hub: Running, events: EventWaiter) -> None:
    a, b = unique_id("a"), unique_id("b")
    async with answering_device(hub, events, a, answer=False) as dev_a, mqtt_client(hub, b) as dev_b:
        pending = asyncio.create_task(hub.hub.commands.send(a, "x", {}, timeout_s=WAIT_S))
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(dev_a.messages))
        assert isinstance(message.payload, bytes)
        request_id = json.loads(message.payload)["id"]
        forged = json.dumps({"id": request_id, "ok": True, "result": {"forged": True}})
        await dev_b.publish(f"devices/{b}/responses", forged, qos=1)
        await dev_b.publish(f"devices/{b}/telemetry", telemetry({"t": 1}), qos=1)
        await events.telemetry_from(b)  # the forged answer has been judged by now
        assert not pending.done()
        await dev_a.publish(f"devices/{a}/responses", json.dumps({"id": request_id, "ok": True}), qos=1)
        result = await pending
    assert (result.ok, result.result) == (True, {})
    state_b = hub.hub.fleet.get(b)
    assert state_b is not None
    assert state_b.rejected == {"wrong_device": 1}


async def test_commands_over_rest(hub: Running, events: EventWaiter, http: httpx.AsyncClient) -> None:
    device = unique_id()
    async with answering_device(hub, events, device):
        ok = await http.post(f"/api/v1/devices/{device}/commands/reboot", json={"args": {"delay": 1}})
        assert ok.status_code == 200
        assert (ok.json()["ok"], ok.json()["result"]) == (True, {"echo": {"delay": 1}})
        bad = await http.post(f"/api/v1/devices/{device}/commands/reboot", json={"args": [1]})
        assert bad.status_code == 400
        assert "args: Input should be an object" in bad.json()["error"]
        assert (await http.post(f"/api/v1/devices/{device}/commands/x", json={"timeout": 0})).status_code == 400
        _, read_token = hub.hub.registry.create_token(Scope.READ)
        denied = await http.post(
            f"/api/v1/devices/{device}/commands/x", headers={"Authorization": f"Bearer {read_token}"}
        )
        assert denied.status_code == 403
    await events.status_of(device, online=False)
    offline = await http.post(f"/api/v1/devices/{device}/commands/reboot", json={})
    assert offline.status_code == 409
    assert (await http.post("/api/v1/devices/ghost/commands/reboot", json={})).status_code == 404
    async with answering_device(hub, events, device, answer=False):
        late = await http.post(f"/api/v1/devices/{device}/commands/x", json={"timeout": 0.2})
    assert late.status_code == 504
    assert "did not answer" in late.json()["error"]


def test_merge_patch() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"a": None, "b": {"c": 5}, "e": [1]}) == {
        "b": {"c": 5, "d": 3},
        "e": [1],
    }


async def test_the_twin(hub: Running, events: EventWaiter, http: httpx.AsyncClient) -> None:
    device = unique_id()
    device_secret(hub, device)  # registered
    empty = (await http.get(f"/api/v1/devices/{device}/twin")).json()
    assert empty["desired"] == {"version": 0, "state": {}}
    patched = await http.patch(f"/api/v1/devices/{device}/twin", json={"desired": {"rate": 2, "mode": "eco"}})
    assert patched.json()["desired"] == {"version": 1, "state": {"rate": 2, "mode": "eco"}}
    assert patched.json()["delta"] == {"rate": 2, "mode": "eco"}
    conflict = await http.patch(f"/api/v1/devices/{device}/twin", json={"desired": {"x": 1}, "version": 0})
    assert conflict.status_code == 409
    assert "at version 1, not 0" in conflict.json()["error"]
    # The device receives the desired state when it connects, and reports back.
    async with mqtt_client(hub, device) as client:
        await client.subscribe(f"devices/{device}/state/desired", qos=1)
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(client.messages))
        assert message.retain
        assert isinstance(message.payload, bytes)
        assert json.loads(message.payload) == {"version": 1, "state": {"rate": 2, "mode": "eco"}}
        report = {"version": 1, "state": {"rate": 2}}
        await client.publish(f"devices/{device}/state/reported", json.dumps(report), qos=1)
        await client.publish(f"devices/{device}/state/reported", json.dumps(report), qos=1)  # stale repeat
        await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1}), qos=1)
        await events.telemetry_from(device)
    twin = (await http.get(f"/api/v1/devices/{device}/twin")).json()
    assert twin["reported"] == {"version": 1, "state": {"rate": 2}}
    assert twin["delta"] == {"mode": "eco"}
    state = hub.hub.fleet.get(device)
    assert state is not None
    assert state.rejected == {"stale_version": 1}
    assert (await http.get("/api/v1/devices/ghost/twin")).status_code == 404
    bad = await http.patch(f"/api/v1/devices/{device}/twin", json={"desired": "on"})
    assert bad.status_code == 400


async def test_simulated_devices_follow_their_desired_state(
    iothub_hub: HubUnderTest, iothub_sse: ChannelClient
) -> None:
    hub, device = iothub_hub.running, "twin-0000"
    await iothub_hub.add_device(device, "thermostat")
    await hub.hub.twins.patch_desired(device, {"setpoint": 18.5, "rate": 20, "colour": "red"})
    async with iothub_hub.fleet(devices=1, rate=5, prefix="twin"):
        await iothub_sse.expect("telemetry", device=device, where={"setpoint": 18.5})
    twin = await hub.hub.twins.get(device)
    assert twin.reported == {"setpoint": 18.5, "rate": 20, "colour": "red"}
    assert twin.delta() == {}


async def test_a_simulated_device_drops_what_desired_no_longer_has(hub: Running) -> None:
    from iothub.simulators.fleet import run_fleet
    from tests.conftest import service_client
    from tests.simulators.test_fleet import config

    cfg = config(hub, devices=1, rate=5, prefix="twin-drop", profiles=("thermostat",))
    device = cfg.device_ids()[0]
    await hub.hub.twins.patch_desired(device, {"setpoint": 18.5, "colour": "red"})
    reports: list[dict[str, Any]] = []
    stop = asyncio.Event()
    async with service_client(hub, "twin-reader") as reader:
        await reader.subscribe(f"devices/{device}/state/reported", qos=1)
        fleet = asyncio.create_task(run_fleet(cfg, stop))
        try:
            async with asyncio.timeout(WAIT_S):
                async for message in reader.messages:
                    assert isinstance(message.payload, bytes)
                    reports.append(json.loads(message.payload))
                    if len(reports) == 1:
                        await hub.hub.twins.patch_desired(device, {"colour": None})
                    else:
                        break
        finally:
            stop.set()
            async with asyncio.timeout(WAIT_S):
                await fleet
    assert reports == [
        {"version": 1, "state": {"setpoint": 18.5, "colour": "red"}},
        {"version": 2, "state": {"setpoint": 18.5}},
    ]


async def test_a_desired_state_the_device_could_not_report_back_is_refused(
    hub: Running, http: httpx.AsyncClient
) -> None:
    device = unique_id()
    device_secret(hub, device)
    limit = hub.hub.settings.ingest.max_payload_bytes
    assert (await http.patch(f"/api/v1/devices/{device}/twin", json={"desired": {"mode": "eco"}})).status_code == 200
    big = await http.patch(f"/api/v1/devices/{device}/twin", json={"desired": {"blob": "x" * limit}})
    assert big.status_code == 413
    error = big.json()["error"]
    size = len(json.dumps({"version": 2, "state": {"mode": "eco", "blob": "x" * limit}}))
    assert error.startswith(f"desired state of '{device}' would be published as {size} bytes, over the ")
    assert error.endswith(f"{limit}-byte limit (ingest.max_payload_bytes) that the device's reported state must fit in")
    twin = (await http.get(f"/api/v1/devices/{device}/twin")).json()
    assert twin["desired"] == {"version": 1, "state": {"mode": "eco"}}  # neither stored nor published
    async with mqtt_client(hub, device) as client:
        await client.subscribe(f"devices/{device}/state/desired", qos=1)
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(client.messages))
        assert message.payload == b'{"version": 1, "state": {"mode": "eco"}}'


async def test_desired_state_is_announced_again_after_a_restart(tmp_path: Any) -> None:
    from iothub.runner import serve
    from tests.conftest import hub_settings, service_client

    settings = hub_settings(tmp_path / "data")
    async with serve(settings) as running:
        running.hub.registry.add_device("thermo-9")
        await running.hub.twins.patch_desired("thermo-9", {"setpoint": 21})
    async with serve(settings) as running, service_client(running, "reader") as reader:
        await reader.subscribe("devices/thermo-9/state/desired", qos=1)
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(reader.messages))
        assert isinstance(message.payload, bytes)
        assert json.loads(message.payload) == {"version": 1, "state": {"setpoint": 21}}


async def test_what_the_hub_sends_a_device_is_not_counted_as_the_devices(hub: Running, events: EventWaiter) -> None:
    """A command or a desired state going out is neither a received device message nor a sign of life."""
    device = unique_id()
    async with answering_device(hub, events, device, answer=False):
        state = hub.hub.fleet.get(device)
        assert state is not None
        seen = state.last_seen
        with pytest.raises(CommandTimeout):
            await hub.hub.commands.send(device, "ping", {}, timeout_s=0.2)
        await hub.hub.twins.patch_desired(device, {"mode": "eco"})
        other = unique_id()
        async with mqtt_client(hub, other) as client:  # a device message after them, as a barrier
            await client.publish(f"devices/{other}/telemetry", telemetry({"t": 1}), qos=1)
        await events.telemetry_from(other)
    assert state.last_seen == seen
    metrics = hub.hub.metrics.render().decode()
    assert 'iothub_messages_received_total{kind="command"}' not in metrics
    assert 'iothub_messages_received_total{kind="state/desired"}' not in metrics


async def test_an_oversized_desired_state_stored_earlier_is_not_announced(tmp_path: Path) -> None:
    """One stored before the limit existed would trap its device in a reconnect loop: it stays out."""
    settings = hub_settings(tmp_path / "data", ingest={"max_payload_bytes": 1024})
    async with serve(settings) as running:
        running.hub.registry.add_device("big-twin")
        running.hub.registry.add_device("small-twin")
        running.hub.registry.save_twin("big-twin", {"blob": "x" * 2000}, 1, {}, 0)
        running.hub.registry.save_twin("small-twin", {"mode": "eco"}, 1, {}, 0)
    async with serve(settings) as running, service_client(running, "twin-watch", Role.OBSERVER) as watcher:
        await watcher.subscribe("devices/+/state/desired", qos=1)
        async with asyncio.timeout(WAIT_S):
            first = await anext(aiter(watcher.messages))
        assert str(first.topic) == "devices/small-twin/state/desired"
        await watcher.subscribe("probe/twins", qos=1)
        await running.hub.publish("probe/twins", b"probe")
        async with asyncio.timeout(WAIT_S):
            second = await anext(aiter(watcher.messages))
        assert str(second.topic) == "probe/twins"


async def test_a_command_waits_for_a_connected_device_to_subscribe(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as client:
        await events.status_of(device, online=True)  # online from its CONNECT, not yet subscribed
        with pytest.raises(CommandTimeout, match=r"within 0.2 s \(queued: the device is not subscribed to it\)"):
            await hub.hub.commands.send(device, "x", {}, timeout_s=0.2)
        pending = asyncio.create_task(hub.hub.commands.send(device, "blink", {"n": 1}, timeout_s=WAIT_S))
        await client.subscribe(f"devices/{device}/commands/+", qos=1)
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(client.messages))
        assert isinstance(message.payload, bytes)
        request = json.loads(message.payload)
        assert (str(message.topic), request["args"]) == (f"devices/{device}/commands/blink", {"n": 1})
        await client.publish(f"devices/{device}/responses", json.dumps({"id": request["id"], "ok": True}), qos=1)
        result = await pending
    assert result.ok


async def test_a_persistent_session_keeps_a_device_reachable(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device, clean_session=False) as client:
        await client.subscribe(f"devices/{device}/commands/+", qos=1)
    await events.status_of(device, online=False)
    async with mqtt_client(hub, device, clean_session=False) as again:  # no SUBSCRIBE: its session has one
        await events.status_of(device, online=True)
        pending = asyncio.create_task(hub.hub.commands.send(device, "x", {}, timeout_s=WAIT_S))
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(again.messages))
        assert isinstance(message.payload, bytes)
        request_id = json.loads(message.payload)["id"]
        await again.publish(f"devices/{device}/responses", json.dumps({"id": request_id, "ok": True}), qos=1)
        assert (await pending).ok


async def test_a_queued_command_waits_in_a_persistent_session(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device, clean_session=False) as client:
        await client.subscribe(f"devices/{device}/commands/+", qos=1)
    await events.status_of(device, online=False)
    pending = asyncio.create_task(hub.hub.commands.send(device, "x", {"n": 2}, timeout_s=WAIT_S, queue=True))
    sample = hub.hub.metrics.registry.get_sample_value
    for _ in range(200):  # bounded: 10 s; the broker holds it for the device
        if sample("iothub_mqtt_queued", {"state": "queued"}) == 1:
            break
        await asyncio.sleep(0.05)
    assert sample("iothub_mqtt_queued", {"state": "queued"}) == 1
    async with mqtt_client(hub, device, clean_session=False) as again:  # back, without a SUBSCRIBE
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(again.messages))
        assert isinstance(message.payload, bytes)
        request = json.loads(message.payload)
        assert request["args"] == {"n": 2}
        await again.publish(f"devices/{device}/responses", json.dumps({"id": request["id"], "ok": True}), qos=1)
        assert (await pending).ok
