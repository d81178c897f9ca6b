"""The dashboard in real Chromium (Debian's, driven by Playwright), against a real hub."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from iothub.runner import Running, serve
from iothub.simulators.fleet import run_fleet
from tests.conftest import hub_settings, mqtt_client, telemetry
from tests.simulators.test_fleet import config

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# What a root, headless, offline machine needs (see the machine notes): no sandbox, no GPU, and no
# background traffic to hosts this network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


CHROMIUM_PRESENT = CHROMIUM.exists()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM_PRESENT:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


async def open_dashboard(browser: Any, running: Running) -> Any:
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    await page.goto(f"http://{running.address('http')}/#token={running.hub.first_token}")
    await page.locator("#conn[data-state=live]").wait_for(timeout=10_000)
    return page


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
            await expect(page.locator('#charts .chart[data-metric="temperature"] polyline')).to_have_count(
                1, timeout=10_000
            )
            # A device that dies without a word turns offline.
            sock = probe._client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)
            presence = page.locator('tr[data-device-id="probe"] .presence')
            await expect(presence).to_have_text("offline", timeout=5_000)
            await expect(page.locator('tr[data-device-id="probe"] .reason')).to_have_text("last will")
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
