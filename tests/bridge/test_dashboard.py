"""The dashboard in real Chromium (Debian's, driven by Playwright), against a real hub."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from iothub.runner import Running, serve
from iothub.simulators.fleet import run_fleet
from tests.bridge.conftest import ARTIFACTS, open_dashboard
from tests.conftest import device_secret, hub_settings, mqtt_client, telemetry, unique_id
from tests.mqtt_raw import publish_packet, raw_connect, read_packet
from tests.simulators.test_fleet import config

# Resolves after n animation frames: what the page schedules for its next frame has run by then.
FRAMES = "n => new Promise(done => { const step = () => (n-- > 0 ? requestAnimationFrame(step) : done()); step(); })"


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


async def test_live_devices_values_and_presence(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with serve(hub_settings(tmp_path / "data")) as running:
        fleet_cfg = config(running, devices=4, rate=2, prefix="dash")
        stop = asyncio.Event()
        fleet = asyncio.create_task(run_fleet(fleet_cfg, stop))
        try:
            page = await open_dashboard(browser, running)
            for device_id in fleet_cfg.device_ids():
                await expect(page.locator(f'tr[data-device-id="{device_id}"] .presence')).to_have_text(
                    "online", timeout=10_000
                )
            will = aiomqtt.Will("devices/probe/status", b'{"online": false}', qos=1, retain=True)
            probe = mqtt_client(running, "probe", will=will)
            await probe.__aenter__()
            await probe.publish("devices/probe/status", b'{"online": true}', qos=1)
            await probe.publish("devices/probe/telemetry", telemetry({"temperature": 42.42}), qos=1)
            # A published value shows up live within 2 s.
            value = page.locator('tr[data-device-id="probe"] [data-metric="temperature"]')
            await expect(value).to_contain_text("42.42", timeout=2_000)
            # Charts: history from the REST API, then live.
            await page.locator('tr[data-device-id="dash-0000"]').click()
            await expect(page.locator('#charts .chart[data-metric="temperature"] path.line')).to_have_count(
                1, timeout=10_000
            )
            # A device that dies without a word turns offline.
            sock = probe._client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)
            presence = page.locator('tr[data-device-id="probe"] .presence')
            await expect(presence).to_have_text("offline · last will", timeout=5_000)
            with contextlib.suppress(Exception):
                await probe.__aexit__(None, None, None)
            # Filters.
            await page.fill("#filter-text", "probe")
            await expect(page.locator('tr[data-device-id="dash-0001"]')).to_be_hidden()
            await page.fill("#filter-text", "")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await fleet


async def test_the_page_recovers_after_the_hub_restarts(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    mqtt_port, http_port = free_ports(2)
    settings = hub_settings(tmp_path / "data", mqtt={"port": mqtt_port, "ws_port": None}, http={"port": http_port})
    async with serve(settings) as running:
        page = await open_dashboard(browser, running)
        token = running.hub.first_token
        async with mqtt_client(running, "phoenix") as device:
            await device.publish("devices/phoenix/telemetry", telemetry({"t": 1}), qos=1)
            await expect(page.locator('tr[data-device-id="phoenix"] [data-metric="t"]')).to_contain_text("1")
    await expect(page.locator("#conn")).not_to_have_attribute("data-state", "live", timeout=10_000)
    async with serve(settings) as running:
        running.hub.first_token = token  # the same registry: the page's token still works
        await page.locator("#conn[data-state=live]").wait_for(timeout=20_000)
        async with mqtt_client(running, "phoenix") as device:
            await device.publish("devices/phoenix/telemetry", telemetry({"t": 777}), qos=1)
            await expect(page.locator('tr[data-device-id="phoenix"] [data-metric="t"]')).to_contain_text(
                "777", timeout=5_000
            )
        await page.screenshot(path=str(ARTIFACTS / "dashboard-after-restart.png"))


async def test_a_wrong_token_asks_for_another(browser: Any, hub: Running) -> None:
    from playwright.async_api import expect

    page = await browser.new_page()
    await page.goto(f"http://{hub.address('http')}/#token=iothub_wrong")
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#login-error")).to_contain_text("unknown API token")
    await page.fill("#token", hub.hub.first_token or "")
    await page.click("#login-form button")
    await page.locator("#conn[data-state=live]").wait_for(timeout=10_000)


async def test_a_hidden_tab_catches_up_on_return(browser: Any, hub: Running) -> None:
    from playwright.async_api import expect

    page = await open_dashboard(browser, hub)
    hide = "hidden => { Object.defineProperty(document, 'hidden', {value: hidden, configurable: true});"
    hide += " document.dispatchEvent(new Event('visibilitychange')); }"
    async with mqtt_client(hub, "sleepy") as device:
        await device.publish("devices/sleepy/telemetry", telemetry({"t": 1}), qos=1)
        value = page.locator('tr[data-device-id="sleepy"] [data-metric="t"]')
        await expect(value).to_contain_text("1")
        await page.evaluate(hide, True)  # the tab is hidden: its stream is let go
        await expect(page.locator("#conn")).to_have_attribute("data-state", "offline")
        sse = hub.hub.metrics.registry
        for _ in range(100):  # bounded: 5 s for the hub to see the stream close
            if sse.get_sample_value("iothub_sse_clients") == 0:
                break
            await asyncio.sleep(0.05)
        assert sse.get_sample_value("iothub_sse_clients") == 0
        await device.publish("devices/sleepy/telemetry", telemetry({"t": 2024}), qos=1)
        await page.evaluate(hide, False)  # back: it resumes from the last event it saw
        await expect(value).to_contain_text("2024", timeout=5_000)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def utc_clock(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%H:%M:%S")


async def open_utc_dashboard(browser: Any, running: Running, fragment: str = "") -> Any:
    """The dashboard in a page whose clock reads UTC, so a test can predict the times it shows."""
    page = await browser.new_page(viewport={"width": 1400, "height": 900}, timezone_id="UTC")
    await page.goto(f"http://{running.address('http')}/#token={running.hub.first_token}{fragment}")
    await page.locator("#conn[data-state=live]").wait_for(timeout=10_000)
    return page


async def hover_on(page: Any, chart: Any, x: float) -> None:
    """Point at `x` (in the chart's SVG pixels, which are CSS pixels) halfway down the plot."""
    box = await chart.locator("svg").bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + x, box["y"] + box["height"] / 2)


async def test_charts_have_a_time_axis_and_a_tooltip(browser: Any, hub: Running) -> None:
    from playwright.async_api import expect

    device_id = unique_id("chart")
    start = int(time.time() * 1000) - 12 * 60_000
    async with mqtt_client(hub, device_id) as device:
        for i in range(13):  # 12 minutes of temperature, one point a minute: 0.25, 1.25, ... 12.25
            await device.publish(
                f"devices/{device_id}/telemetry", telemetry({"temperature": i + 0.25}, ts=start + i * 60_000), qos=1
            )
        for i in range(5):  # the last 50 s of humidity
            await device.publish(
                f"devices/{device_id}/telemetry",
                telemetry({"humidity": 40 + i}, ts=start + 12 * 60_000 - (4 - i) * 10_000),
                qos=1,
            )
    page = await open_utc_dashboard(browser, hub)
    temperature = page.locator('#charts .chart[data-metric="temperature"]')
    humidity = page.locator('#charts .chart[data-metric="humidity"]')
    await expect(temperature.locator("path.line")).to_have_count(1, timeout=10_000)
    # A time axis: round minutes over 12 minutes, round seconds over the last minute.
    await expect(temperature.locator(".tick").first).to_have_text(re.compile(r"^\d\d:\d\d$"))
    assert await temperature.locator(".tick").count() >= 2
    await expect(humidity.locator(".tick").first).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))
    assert await humidity.locator(".tick").count() >= 2
    # A tooltip with the value and time of the point nearest the pointer: the first, then the last.
    path = await temperature.locator("path.line").get_attribute("d")
    xs = [float(segment.split(",")[0]) for segment in re.split("[ML]", path or "") if segment]
    assert len(xs) == 13
    tip = temperature.locator(".tip")
    await expect(tip).to_be_hidden()
    await hover_on(page, temperature, xs[0] + 2)
    await expect(tip).to_have_text(f"0.25 {utc_clock(start)}")
    await expect(temperature.locator(".guide")).to_have_count(1)
    await hover_on(page, temperature, xs[-1] - 2)
    await expect(tip).to_have_text(f"12.25 {utc_clock(start + 12 * 60_000)}")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-chart-tooltip.png"))
    await page.mouse.move(0, 0)
    await expect(tip).to_be_hidden()


async def test_a_boolean_metric_is_drawn_as_on_off_bands(browser: Any, hub: Running) -> None:
    from playwright.async_api import expect

    device_id = unique_id("door")
    start = int(time.time() * 1000) - 50_000
    states = [True, True, False, True, False]  # runs: on, off, on, off (until now)
    async with mqtt_client(hub, device_id) as device:
        for i, is_open in enumerate(states):
            await device.publish(
                f"devices/{device_id}/telemetry", telemetry({"door_open": is_open}, ts=start + i * 10_000), qos=1
            )
    page = await open_utc_dashboard(browser, hub)
    chart = page.locator('#charts .chart[data-metric="door_open"]')
    await expect(chart.locator("rect.band.on")).to_have_count(2, timeout=10_000)
    await expect(chart.locator("rect.band.off")).to_have_count(2)
    await expect(chart.locator("path.line")).to_have_count(0)
    await expect(chart.locator(".value-label")).to_have_text(["on", "off"])
    await expect(chart.locator(".now")).to_have_text("off")
    # The first band runs from the first point to the first "false": on, since the first point.
    band = chart.locator("rect.band.on").first
    x = float(await band.get_attribute("x") or "nan")
    width = float(await band.get_attribute("width") or "nan")
    assert width > 10
    await hover_on(page, chart, x + width * 0.75)
    await expect(chart.locator(".tip")).to_have_text(f"on {utc_clock(start + 10_000)}")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-boolean-bands.png"))


async def test_the_first_device_is_shown_until_the_user_picks_another(browser: Any, hub: Running) -> None:
    from playwright.async_api import expect

    page = await open_utc_dashboard(browser, hub)
    await expect(page.locator("#detail-empty")).to_contain_text("pick a device")
    await expect(page.locator("#detail-head")).to_be_hidden()
    await expect(page.locator("#charts-empty")).to_be_hidden()  # no "no telemetry" for no device
    await page.set_viewport_size({"width": 1200, "height": 900})  # charts redraw on resize: still none
    await page.evaluate(FRAMES, 3)
    await expect(page.locator("#detail-empty")).to_be_visible()
    await expect(page.locator("#charts-empty")).to_be_hidden()
    base = unique_id("pick")
    first, second, earlier = f"{base}-b", f"{base}-c", f"{base}-a"
    async with mqtt_client(hub, second) as device:
        await device.publish(f"devices/{second}/telemetry", telemetry({"t": 2}), qos=1)
    async with mqtt_client(hub, first) as device:
        await device.publish(f"devices/{first}/telemetry", telemetry({"t": 1}), qos=1)
    # The first device to appear is shown at once; one that turns up later does not take its place.
    await expect(page.locator("#detail-title")).to_have_text(second)
    await expect(page.locator('#charts .chart[data-metric="t"]')).to_have_count(1)
    await expect(page.locator('tr[data-device-id="' + first + '"]')).to_be_visible()
    await expect(page.locator("#detail-title")).to_have_text(second)
    # A fresh page shows the first device of the list, without a click.
    await page.reload()
    await expect(page.locator("#detail-title")).to_have_text(first, timeout=10_000)
    await expect(page.locator(f'tr[data-device-id="{first}"]')).to_have_class(re.compile("selected"))
    await expect(page.locator('#charts .chart[data-metric="t"] .now')).to_have_text("1")
    # What the user picks stays picked: when a device that sorts first appears, and across a reload.
    await page.locator(f'tr[data-device-id="{second}"]').click()
    await expect(page.locator("#detail-title")).to_have_text(second)
    async with mqtt_client(hub, earlier) as device:
        await device.publish(f"devices/{earlier}/telemetry", telemetry({"t": 0}), qos=1)
    await expect(page.locator(f'tr[data-device-id="{earlier}"]')).to_be_visible()
    await expect(page.locator("#detail-title")).to_have_text(second)
    await page.reload()
    await page.locator("#conn[data-state=live]").wait_for(timeout=10_000)
    await expect(page.locator("#detail-title")).to_have_text(second)
    await expect(page.locator('#charts .chart[data-metric="t"] .now')).to_have_text("2")


async def test_the_events_panel_says_so_until_the_first_event(browser: Any, hub: Running) -> None:
    from playwright.async_api import expect

    page = await open_utc_dashboard(browser, hub)
    empty = page.locator("#feed-empty")
    await expect(empty).to_have_text("No status changes, command results or alerts yet.")
    device_id = unique_id("feed")
    async with mqtt_client(hub, device_id) as device:
        await device.publish(f"devices/{device_id}/status", b'{"online": true}', qos=1)
        await expect(page.locator("#feed li")).to_have_count(1)
    await expect(empty).to_be_hidden()


async def test_presence_reads_the_same_in_the_list_the_detail_and_the_feed(browser: Any, hub: Running) -> None:
    from playwright.async_api import expect

    page = await open_utc_dashboard(browser, hub)
    lost, left = unique_id("will"), unique_id("bye")
    will = (f"devices/{lost}/status", b'{"online": false}')
    port, secret = hub.ports["mqtt"], device_secret(hub, lost)
    reader, writer, connack = await raw_connect(port, lost, username=lost, password=secret, will=will)
    assert connack.body[1] == 0
    writer.write(publish_packet(f"devices/{lost}/status", b'{"online": true}', qos=1, packet_id=1))  # reported online
    assert (await read_packet(reader)).kind == 4  # PUBACK
    row = page.locator(f'tr[data-device-id="{lost}"] .presence')
    detail = page.locator("#detail-presence .presence")
    await expect(row).to_have_text("online")  # not "online · reported online"
    await expect(page.locator("#detail-title")).to_have_text(lost)
    await expect(detail).to_have_text("online")
    writer.transport.abort()  # dropped without a word: the Will goes out
    await expect(row).to_have_text("offline · last will", timeout=5_000)
    await expect(detail).to_have_text("offline · last will")
    await expect(page.locator("#feed li").first).to_contain_text(f"{lost}: offline · last will")
    async with mqtt_client(hub, left) as device:
        await device.publish(f"devices/{left}/status", b'{"online": true}', qos=1)
        await expect(page.locator(f'tr[data-device-id="{left}"] .presence')).to_have_text("online")
    await expect(page.locator(f'tr[data-device-id="{left}"] .presence')).to_have_text("offline · clean disconnect")
    await expect(page.locator("#feed li").first).to_contain_text(f"{left}: offline · clean disconnect")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-presence.png"))


async def test_the_label_filter_keeps_values_that_contain_an_equals_sign(browser: Any, hub: Running) -> None:
    from playwright.async_api import expect

    base = unique_id("eq")
    matching, other = f"{base}-a", f"{base}-b"
    hub.hub.registry.add_device(matching, labels={"query": "a=b=c"})
    hub.hub.registry.add_device(other, labels={"query": "a"})
    page = await open_utc_dashboard(browser, hub)
    await expect(page.locator(f'tr[data-device-id="{other}"]')).to_be_visible()
    await page.select_option("#filter-label", "query=a=b=c")
    await expect(page.locator(f'tr[data-device-id="{matching}"]')).to_be_visible()
    await expect(page.locator(f'tr[data-device-id="{other}"]')).to_be_hidden()
    await expect(page.locator("#list-count")).to_have_text("1 of 2")


# Keeps every EventSource the page opens in window.sources, so a test can hand the page a stream event.
KEEP_SOURCES = """{
    const Original = window.EventSource;
    window.sources = [];
    window.EventSource = class extends Original {
        constructor(...args) { super(...args); window.sources.push(this); }
    };
}"""
GAPS = """n => { const es = window.sources[window.sources.length - 1];
    const gap = '{"missed": 1, "reason": "test"}';
    for (let i = 0; i < n; i++) es.dispatchEvent(new MessageEvent("gap", { data: gap })); }"""


async def until_count(items: list[Any], n: int) -> None:
    for _ in range(200):  # bounded: 10 s
        if len(items) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(items)} of {n} device list requests came")


async def test_the_device_list_loads_one_at_a_time_and_keeps_the_events_that_arrive_meanwhile(
    browser: Any, hub: Running
) -> None:
    """Gaps ask for the device list again: one request at a time, any number of gaps while it runs
    make one follow-up, and an event that arrives while it loads survives its older snapshot."""
    from playwright.async_api import expect

    device_id = unique_id("gappy")
    async with mqtt_client(hub, device_id) as device:
        await device.publish(f"devices/{device_id}/telemetry", telemetry({"t": 1}), qos=1)
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        await page.add_init_script(KEEP_SOURCES)
        await page.goto(f"http://{hub.address('http')}/#token={hub.hub.first_token}")
        await page.locator("#conn[data-state=live]").wait_for(timeout=10_000)
        value = page.locator(f'tr[data-device-id="{device_id}"] [data-metric="t"] .v')
        await expect(value).to_have_text("1")
        held: list[Any] = []

        async def hold(route: Any) -> None:
            held.append(route)

        await page.route(lambda url: url.endswith("/api/v1/devices"), hold)
        await page.evaluate(GAPS, 3)
        await until_count(held, 1)
        snapshot = await held[0].fetch()  # the fleet as it is now: t = 1
        await device.publish(f"devices/{device_id}/telemetry", telemetry({"t": 2}), qos=1)
        await expect(value).to_have_text("2")  # live while the list loads
        await page.evaluate(FRAMES, 2)
        assert len(held) == 1  # one request at a time
        await held[0].fulfill(response=snapshot)  # the older snapshot comes in: the event is kept
        await until_count(held, 2)  # the three gaps' one follow-up, asked for once the first is shown
        await expect(value).to_have_text("2")
        await held[1].continue_()
        await page.evaluate(GAPS, 1)  # a gap after the follow-up: one more load, none queued before it
        await until_count(held, 3)
        await held[2].continue_()
        await page.evaluate(FRAMES, 2)
        assert len(held) == 3
        await expect(value).to_have_text("2")
        await expect(page.locator("#summary")).to_contain_text("device")
