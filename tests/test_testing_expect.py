"""``client.expect`` of the pytest plugin: each event is returned once, earlier arrivals count, and a
miss explains itself (the sample projects in ``tests/testing_samples`` show it as a user sees it)."""

from __future__ import annotations

import pytest

from iothub.testing import ChannelClient, ExpectationFailed, HubUnderTest
from iothub.watch.events import WatchEvent
from iothub.watch.expect import Expectation


async def test_each_event_is_returned_once_even_when_it_came_first(
    iothub_hub: HubUnderTest, iothub_sse: ChannelClient
) -> None:
    for _ in range(2):
        await iothub_hub.send_telemetry("twice-1", {"temperature": 20})
    first = await iothub_sse.expect("telemetry", device="twice-1", where={"temperature": 20})
    second = await iothub_sse.expect("telemetry", device="twice-1", where={"temperature": lambda t: t < 25})
    assert first.id is not None
    assert second.id is not None
    assert first.id < second.id
    with pytest.raises(ExpectationFailed) as failed:
        await iothub_sse.expect("telemetry", device="twice-1", timeout=0.5)
    report = str(failed.value)
    assert report.startswith("expected a telemetry event from twice-1 on sse within 0.5 s\n"), report
    assert "type is status, not telemetry" in report  # online, then offline: the claimed readings are not listed
    assert "temperature=20" not in report


async def test_mqtt_events_carry_no_id_and_status_is_what_the_device_says(
    iothub_hub: HubUnderTest, iothub_mqtt: ChannelClient
) -> None:
    async with await iothub_hub.device("says-1") as device:
        await device.publish("devices/says-1/status", b'{"online": false, "reason": "battery low"}', qos=1)
    event = await iothub_mqtt.expect("status", device="says-1", where={"online": False, "reason": "battery low"})
    assert event.id is None


def test_mismatches_name_the_first_difference() -> None:
    event = WatchEvent("telemetry", "th-1", 0, {"metrics": {"t": 1, "mode": "eco mode"}})

    def warm(t: float) -> bool:
        return t > 20

    assert Expectation("status").mismatch(event) == "type is telemetry, not status"
    assert Expectation("telemetry", "th-2").mismatch(event) == "device is th-1, not th-2"
    assert Expectation("telemetry", where={"h": 1}).mismatch(event) == "no h (it has t, mode)"
    assert Expectation("telemetry", where={"t": 2}).mismatch(event) == "t is 1, not 2"
    assert Expectation("telemetry", where={"t": warm}).mismatch(event) == "t=1 fails warm()"
    assert Expectation("telemetry", where={"mode": "eco"}).mismatch(event) == 'mode is "eco mode", not eco'
    assert Expectation("telemetry", where=lambda e: False).mismatch(event) == "the predicate is false for it"
    assert Expectation("telemetry", "th-1", {"t": 1}).mismatch(event) is None
    assert (
        Expectation("telemetry", "th-1", {"t": warm}).describe() == "a telemetry event from th-1 where t passes warm()"
    )


async def test_the_grpc_client_sees_what_sse_sees(
    iothub_hub: HubUnderTest, iothub_grpc: ChannelClient, iothub_sse: ChannelClient
) -> None:
    await iothub_hub.send_telemetry("grpc-1", {"temperature": 21.5, "on": True, "mode": "eco"})
    over_grpc = await iothub_grpc.expect("telemetry", device="grpc-1", where={"on": True, "mode": "eco"})
    over_sse = await iothub_sse.expect("telemetry", device="grpc-1")
    assert over_grpc.id == over_sse.id
    assert over_grpc.data == over_sse.data
    offline = await iothub_grpc.expect("status", device="grpc-1", where={"online": False})
    assert offline.values["reason"] == "clean_disconnect"
