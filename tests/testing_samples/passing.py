import pytest

from iothub.testing import ChannelClient, HubUnderTest


@pytest.mark.asyncio
async def test_a_reading_reaches_the_apps(iothub_hub: HubUnderTest, iothub_ws: ChannelClient) -> None:
    await iothub_hub.send_telemetry("th-1", {"temperature": 21.5, "humidity": 40})
    event = await iothub_ws.expect("telemetry", device="th-1", where={"temperature": 21.5}, timeout=5)
    assert event.data["metrics"]["humidity"] == 40
