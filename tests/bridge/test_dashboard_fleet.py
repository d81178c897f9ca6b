"""The dashboard in Chromium with a real fleet: 500 simulated devices (``iothub simulate`` in a process
of its own) publishing to a hub in this one. The page must stay usable: a filter keystroke and a new
value of a chosen device show up (bounds are generous: the machine may be loaded), the list draws the
rows on screen rather than the fleet, and the Events panel is on screen without scrolling."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iothub.runner import Running, serve
from tests.bridge.conftest import ARTIFACTS, open_dashboard
from tests.conftest import hub_settings, mqtt_client, telemetry

FLEET = 500
WAIT_MS = 15_000  # for what the page shows; generous: two loaded cores run the hub, fleet and browser

COLUMN_WIDTHS = "[...document.querySelectorAll('#devices th')].map((th) => th.getBoundingClientRect().width)"


async def wait_fleet_online(hub: Any, count: int) -> None:
    for _ in range(900):  # bounded: 90 s for the fleet to register and connect
        if sum(1 for d in hub.fleet.devices.values() if d.online) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the simulated fleet did not come online ({count} devices)")


@pytest.mark.timeout(180)
async def test_the_page_stays_responsive_with_500_devices(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    data = tmp_path / "data"
    async with serve(hub_settings(data)) as running:
        fleet = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "iothub", "simulate", "--broker", f"mqtt://{running.address('mqtt')}",
            "--data-dir", str(data), "--devices", str(FLEET), "--rate", "0.5", "--prefix", "load",
            "--duration", "150",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_fleet_online(running.hub, FLEET)
            page = await open_dashboard(browser, running)
            await expect(page.locator("#summary")).to_contain_text(f"{FLEET} devices", timeout=WAIT_MS)
            rows = page.locator("#devices tbody tr[data-device-id]")
            await expect(rows.first).to_be_visible()
            # Only the rows on screen (and a few beyond) are in the page, not one per device.
            assert 5 < await rows.count() < 100
            # The Events panel is on screen without scrolling past the fleet.
            await expect(page.locator("#feed-panel")).to_be_in_viewport()
            assert await page.evaluate("document.documentElement.scrollHeight <= innerHeight")

            # A filter keystroke is reflected: one device left, then ten; the columns keep their widths.
            widths = await page.evaluate(COLUMN_WIDTHS)
            await page.locator("#filter-text").press_sequentially("load-0417")
            await expect(rows).to_have_count(1, timeout=WAIT_MS)
            await expect(rows.first).to_have_attribute("data-device-id", "load-0417")
            assert await page.evaluate(COLUMN_WIDTHS) == widths
            await page.locator("#filter-text").press("Backspace")
            await expect(page.locator("#list-count")).to_have_text(f"10 of {FLEET}", timeout=WAIT_MS)

            # A new value of a chosen device is shown in its row and on its chart.
            async with mqtt_client(running, "probe") as probe:
                await probe.publish("devices/probe/telemetry", telemetry({"t": 1}), qos=1)
                await page.locator("#filter-text").fill("probe")
                row = page.locator('tr[data-device-id="probe"]')
                await expect(row.locator('[data-metric="t"]')).to_contain_text("1", timeout=WAIT_MS)
                await row.click()
                await expect(page.locator("#detail-title")).to_have_text("probe", timeout=WAIT_MS)
                await probe.publish("devices/probe/telemetry", telemetry({"t": 4242}), qos=1)
                await expect(row.locator('[data-metric="t"]')).to_contain_text("4242", timeout=WAIT_MS)
                await expect(page.locator('#charts .chart[data-metric="t"] .now')).to_have_text("4242")
            await page.locator("#filter-text").fill("")
            await expect(page.locator("#list-count")).to_have_text(f"{FLEET + 1}", timeout=WAIT_MS)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-fleet.png"))
            # A device picked in the address is shown, and so is its row, far down the list.
            await page.goto(f"http://{running.address('http')}/#device=load-0321")
            await page.reload()
            await expect(page.locator("#detail-title")).to_have_text("load-0321", timeout=WAIT_MS)
            await expect(page.locator('tr[data-device-id="load-0321"]')).to_be_in_viewport()
        finally:
            fleet.terminate()
            async with asyncio.timeout(30):
                await fleet.wait()


async def test_a_long_series_is_thinned_to_the_lows_and_highs_of_each_span(browser: Any, hub: Running) -> None:
    """What the charts keep of a series that outgrows them (``thin`` in chart.js): at most ``MAX_POINTS``,
    two per span and the ends, in time order, every span's low and high kept; a series already thinned
    is left as it is."""
    page = await open_dashboard(browser, hub)
    thin = """async (n) => {
        const { MAX_POINTS, thin } = await import("/static/chart.js");
        const points = Array.from({ length: n }, (_, i) => [1000 * i, Math.sin(i / 7) * 10 + (i === 4321 ? 99 : 0)]);
        const kept = thin(points, MAX_POINTS);
        const buckets = Math.floor((MAX_POINTS - 2) / 2);
        const span = (1000 * (n - 1)) / buckets;
        const lows = [], highs = [];
        for (const [ts, v] of points) {
            const b = Math.min(buckets - 1, Math.floor(ts / span));
            lows[b] = Math.min(lows[b] ?? Infinity, v);
            highs[b] = Math.max(highs[b] ?? -Infinity, v);
        }
        const keptValues = new Set(kept.map(([, v]) => v));
        return {
            limit: MAX_POINTS,
            length: kept.length,
            again: thin(kept, MAX_POINTS) === kept,
            ordered: kept.every((p, i) => i === 0 || kept[i - 1][0] < p[0]),
            ends: kept[0][0] === 0 && kept[kept.length - 1][0] === 1000 * (n - 1),
            extremes: lows.every((v) => keptValues.has(v)) && highs.every((v) => keptValues.has(v)),
            max: Math.max(...kept.map(([, v]) => v)),
            untouched: thin(points.slice(0, 50), MAX_POINTS).length,
        };
    }"""
    result = await page.evaluate(thin, 20_000)
    assert result["limit"] - 10 < result["length"] <= result["limit"]
    assert result["again"]  # not thinned a second time
    assert result["ordered"]
    assert result["ends"]
    assert result["extremes"]
    assert result["max"] > 99
    assert result["untouched"] == 50
