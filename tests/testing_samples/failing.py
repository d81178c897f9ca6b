import pytest

from iothub.testing import ChannelClient, HubUnderTest


@pytest.mark.asyncio
async def test_a_reading_that_never_comes(iothub_hub: HubUnderTest, iothub_ws: ChannelClient) -> None:
    await iothub_hub.send_telemetry("th-2", {"temperature": 99})
    await iothub_hub.send_telemetry("th-1", {"temperature": 21.5})
    await iothub_ws.expect("telemetry", device="th-1", where={"temperature": 99}, timeout=1)
