"""DeviceService over a real grpc.aio channel: ListDevices (filters, pages), GetDevice, WatchPresence."""

from __future__ import annotations

import grpc
import pytest

from iothub.runner import Running
from iothub.v1 import devices_pb2, devices_pb2_grpc, events_pb2
from tests.bridge.grpc.conftest import Metadata, events_of, read_items
from tests.conftest import EventWaiter, mqtt_client, unique_id


def stub(channel: grpc.aio.Channel) -> devices_pb2_grpc.DeviceServiceAsyncStub:
    return devices_pb2_grpc.DeviceServiceStub(channel)


async def test_list_devices_filters_and_pages(hub: Running, channel: grpc.aio.Channel, admin: Metadata) -> None:
    devices = stub(channel)
    prefix = unique_id("page")
    ids = [f"{prefix}-{n}" for n in range(5)]
    for n, device_id in enumerate(ids):
        hub.hub.registry.add_device(device_id, type="thermostat", labels={"site": "berlin" if n % 2 else "paris"})
    seen: list[str] = []
    token = ""
    for _ in range(5):  # bounded: 5 devices in pages of 2 are 3 pages
        page = await devices.ListDevices(
            devices_pb2.ListDevicesRequest(id_prefix=prefix, page_size=2, page_token=token), metadata=admin
        )
        seen += [d.id for d in page.devices]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    berlin = await devices.ListDevices(
        devices_pb2.ListDevicesRequest(id_prefix=prefix, labels=["site=berlin"]), metadata=admin
    )
    assert [d.id for d in berlin.devices] == [ids[1], ids[3]]
    assert berlin.devices[0].labels == {"site": "berlin"}
    assert berlin.devices[0].type == "thermostat"
    assert berlin.next_page_token == ""


async def test_list_devices_by_presence(
    hub: Running, channel: grpc.aio.Channel, admin: Metadata, events: EventWaiter
) -> None:
    prefix = unique_id("presence")
    on, off = f"{prefix}-on", f"{prefix}-off"
    hub.hub.registry.add_device(off)
    async with mqtt_client(hub, on):
        await events.status_of(on, online=True)
        online = await stub(channel).ListDevices(
            devices_pb2.ListDevicesRequest(id_prefix=prefix, online=True), metadata=admin
        )
        offline = await stub(channel).ListDevices(
            devices_pb2.ListDevicesRequest(id_prefix=prefix, online=False), metadata=admin
        )
    assert [d.id for d in online.devices] == [on]
    assert online.devices[0].presence.online
    assert online.devices[0].presence.reason == "connected"
    assert [d.id for d in offline.devices] == [off]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (devices_pb2.ListDevicesRequest(page_token="not a token"), "field 'page_token': 'not a token' is not a page"),
        (devices_pb2.ListDevicesRequest(page_size=5000), "field 'page_size': 5000 is outside 0..1000"),
        (devices_pb2.ListDevicesRequest(labels=["berlin"]), "field 'labels': 'berlin' is not key=value"),
    ],
)
async def test_bad_list_requests(
    channel: grpc.aio.Channel, admin: Metadata, request_: devices_pb2.ListDevicesRequest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub(channel).ListDevices(request_, metadata=admin)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (failed.value.details() or "")


async def test_get_device(hub: Running, channel: grpc.aio.Channel, admin: Metadata, events: EventWaiter) -> None:
    device_id = unique_id()
    async with mqtt_client(hub, device_id) as client:
        await client.publish(f"devices/{device_id}/telemetry", b'{"metrics": {"t": 21.5, "door": true}}', qos=1)
        await events.telemetry_from(device_id)
        device = await stub(channel).GetDevice(devices_pb2.GetDeviceRequest(id=device_id), metadata=admin)
    assert device.registered
    assert device.presence.online
    assert device.messages == 1
    assert device.latest["t"].value == events_pb2.Value(number=21.5)
    assert device.latest["door"].value == events_pb2.Value(flag=True)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub(channel).GetDevice(devices_pb2.GetDeviceRequest(id="ghost"), metadata=admin)
    assert (missing.value.code(), missing.value.details()) == (grpc.StatusCode.NOT_FOUND, "no device 'ghost'")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub(channel).GetDevice(devices_pb2.GetDeviceRequest(id="a/b"), metadata=admin)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field 'id': 'a/b' breaks the device id rule" in (bad.value.details() or "")


async def test_watch_presence(hub: Running, channel: grpc.aio.Channel, admin: Metadata, events: EventWaiter) -> None:
    before, watched, other = unique_id("before"), unique_id("watched"), unique_id("other")
    never = unique_id("never")
    hub.hub.registry.add_device(never)  # registered, never connected
    async with mqtt_client(hub, before):
        await events.status_of(before, online=True)
        call = stub(channel).WatchPresence(
            devices_pb2.WatchPresenceRequest(devices=[before, watched, never], current=True), metadata=admin
        )
        current, never_seen = sorted(events_of(await read_items(call, 2)), key=lambda e: e.device_id != before)
        async with mqtt_client(hub, other), mqtt_client(hub, watched):
            (online,) = events_of(await read_items(call, 1))
        (offline,) = events_of(await read_items(call, 1))
        call.cancel()
    assert (current.id, current.device_id, current.status.online) == (0, before, True)
    assert current.status.reason == "connected"
    assert (never_seen.id, never_seen.device_id, never_seen.status.online) == (0, never, False)
    assert (never_seen.status.reason, never_seen.status.since_ms) == ("unknown", 0)
    for update, is_online, reason in ((online, True, "connected"), (offline, False, "clean_disconnect")):
        assert update.type == "status"
        assert update.device_id == watched
        assert (update.status.online, update.status.reason) == (is_online, reason)
        assert update.id > 0
