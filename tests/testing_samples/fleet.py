"""The plugin's other fixtures, as a user's test project uses them."""

import pytest

from iothub.testing import ChannelClient, Fleet, HubUnderTest


@pytest.mark.asyncio
@pytest.mark.iothub_fleet(devices=2, rate=5)
async def test_a_fleet_reports_and_answers(
    iothub_hub: HubUnderTest, iothub_fleet: Fleet, iothub_sse: ChannelClient
) -> None:
    first = iothub_fleet.ids[0]
    await iothub_sse.expect("telemetry", device=first, where={"temperature": lambda t: -50 < t < 60})
    answer = await iothub_hub.command(first, "ping")
    assert answer["ok"] is True
    await iothub_sse.expect("command_result", device=first, where={"name": "ping", "ok": True})


@pytest.mark.asyncio
async def test_mqtt_sees_what_devices_publish(iothub_hub: HubUnderTest, iothub_mqtt: ChannelClient) -> None:
    await iothub_hub.send_telemetry("meter-1", {"power": 230})
    await iothub_mqtt.expect("telemetry", device="meter-1", where={"power": 230})
