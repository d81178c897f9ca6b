"""Dashboard benchmark: the page in Debian's Chromium (headless, 1440x900) against simulated fleets.

For each fleet: a hub (its own process, a fresh data dir, free ports) and ``iothub simulate``; once
every device is online, the page is opened, warmed up, then measured: main-thread busy share (CDP
``Performance.getMetrics`` TaskDuration over wall time), frames/s idle and while the device list
scrolls (a requestAnimationFrame counter; the scrolling is done in the page, one step per frame),
long tasks (a PerformanceObserver), how long a filter keystroke takes until the next frame (keydown
to the frame after it), how long until the filtered list is drawn, the renderer's RSS (the largest
renderer process) and the page's DOM size. The same is measured for the dashboard as it was at
BASELINE (its static files served in place of today's through Playwright request routing, against
the same hub and fleet), one page at a time.

    python bench/dashboard.py                                   # 20x1/s, 200x1/s, 1000x0.5/s, 10k registered
    python bench/dashboard.py --warmup 5 --seconds 10 --only 20x1,200x1,1000x0.5   # ~3 minutes
    python bench/dashboard.py --only 1000x0.5 --soak 300        # renderer memory over 5 minutes

Figures depend on the machine and on what else runs on it: they are as measured, nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "21ef143"  # the dashboard before it was built for large fleets
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
QUERY = "fleet-0012"  # typed into the filter one key at a time: ends with one device shown
SCROLL_S = 3.0


@dataclass(frozen=True)
class Scenario:
    name: str
    devices: int
    rate: float
    registered: int = 0  # idle devices registered besides the fleet


SCENARIOS = {
    "20x1": Scenario("20 x 1/s", 20, 1.0),
    "200x1": Scenario("200 x 1/s", 200, 1.0),
    "1000x0.5": Scenario("1000 x 0.5/s", 1000, 0.5),
    "10k": Scenario("10k reg., 1000 x 0.5/s", 1000, 0.5, registered=9000),
}

# Installed before the page's own scripts: frame counter, long tasks, keystroke-to-frame latency.
PROBE = """
window.__bench = { frames: 0, longtasks: [], keys: [], lastKey: 0 };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__bench.longtasks.push(e.duration);
}).observe({ type: "longtask", buffered: true });
const countFrame = () => { window.__bench.frames++; requestAnimationFrame(countFrame); };
requestAnimationFrame(countFrame);
document.addEventListener("keydown", (event) => {
  const t0 = event.timeStamp;
  window.__bench.lastKey = t0;
  requestAnimationFrame(() => {  // the frame after the key; the message runs once it is drawn
    const channel = new MessageChannel();
    channel.port1.onmessage = () => window.__bench.keys.push(performance.now() - t0);
    channel.port2.postMessage(0);
  });
}, true);
"""
SCROLL = """seconds => new Promise((done) => {
  const box = document.getElementById("devices-scroll") || document.scrollingElement;
  const end = performance.now() + seconds * 1000;
  let frames = 0, step = 40;
  const go = () => {
    frames++;
    if (box.scrollTop + box.clientHeight >= box.scrollHeight - 1) step = -40;
    else if (box.scrollTop <= 0) step = 40;
    box.scrollTop += step;
    if (performance.now() < end) requestAnimationFrame(go); else done(frames / seconds);
  };
  requestAnimationFrame(go);
})"""
FILTERED = """query => new Promise((done) => {
  const t0 = window.__bench.lastKey;
  const check = () => {
    const rows = [...document.querySelectorAll("#devices tbody tr[data-device-id]")]
      .filter((r) => !r.hidden && r.dataset.deviceId);
    if (rows.length && rows.every((r) => r.dataset.deviceId.includes(query))) done(performance.now() - t0);
    else if (performance.now() - t0 > 60000) done(null);
    else requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})"""


@dataclass
class Figures:
    busy: float = 0.0  # share of the main thread, idle window
    fps_idle: float = 0.0
    fps_scroll: float = 0.0
    long_count: int = 0  # long tasks in the idle window
    long_max_ms: float = 0.0  # the longest, idle window
    long_max_all_ms: float = 0.0  # the longest, idle window, scrolling and typing
    key_ms: list[float] = field(default_factory=list)
    filtered_ms: float | None = None
    rss: list[float] = field(default_factory=list)  # MiB, sampled
    elements: int = 0
    height_px: int = 0
    shown_after_s: float | None = None  # navigation until the summary counts the whole fleet
    long_load_ms: float = 0.0  # the longest task from navigation to the end of the warm-up


def old_static_files(rev: str) -> dict[str, bytes]:
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{rev}:iothub/bridge/static"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split()
    return {
        name.decode(): subprocess.run(
            ["git", "show", f"{rev}:iothub/bridge/static/{name.decode()}"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        for name in names
    }


@asynccontextmanager
async def fleet_hub(scenario: Scenario, duration_s: float) -> AsyncIterator[tuple[str, str]]:
    """A hub with the scenario's fleet online: yields (http base URL, admin token)."""
    with tempfile.TemporaryDirectory() as data:
        if scenario.registered:
            started = time.monotonic()
            await asyncio.to_thread(register_idle, Path(data), scenario.registered)
            print(f"  registered {scenario.registered} idle devices in {time.monotonic() - started:.0f} s")
        hub = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "iothub", "run", "--data-dir", data, "--log-level", "warning",
            "--mqtt-port", "0", "--mqtt-ws-port", "0", "--http-port", "0",
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        sim = None
        try:
            assert hub.stdout is not None
            async with asyncio.timeout(60):
                found = re.search(r"mqtt=(\S+) .* http=(\S+)", (await hub.stdout.readline()).decode())
                token = re.search(r"\(shown once\): (\S+)", (await hub.stdout.readline()).decode())
            if found is None or token is None:
                raise SystemExit("the hub did not start")
            http = found[2]
            sim = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "iothub", "simulate", "--broker", f"mqtt://{found[1]}", "--data-dir", data,
                "--devices", str(scenario.devices), "--rate", str(scenario.rate), "--prefix", "fleet",
                "--duration", str(duration_s),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            await wait_online(http, token[1], scenario.devices)
            yield http, token[1]
        finally:
            for process in (sim, hub):
                if process is not None and process.returncode is None:
                    process.terminate()
                    async with asyncio.timeout(60):
                        await process.wait()


def register_idle(data: Path, count: int) -> None:
    from iothub.hub.registry import Registry

    data.mkdir(parents=True, exist_ok=True)
    registry = Registry(data / "registry.db")
    try:
        for i in range(count):
            registry.add_device(f"idle-{i:05d}", type="sensor", labels={"site": f"site-{i % 20}"})
    finally:
        registry.close()


async def wait_online(http: str, token: str, devices: int) -> None:
    async with httpx.AsyncClient(base_url=http, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for _ in range(600):  # at most 2 minutes
            body = (await client.get("/api/v1/devices", params={"online": "true"})).json()
            if body["count"] >= devices:
                return
            await asyncio.sleep(0.2)
    raise SystemExit(f"the fleet did not come online ({body['count']} of {devices})")


async def renderer_rss_mib(browser_cdp: Any) -> float:
    info = await browser_cdp.send("SystemInfo.getProcessInfo")
    sizes = []
    for process in info["processInfo"]:
        if process["type"] == "renderer":
            with suppress(psutil.Error):  # gone since
                sizes.append(psutil.Process(process["id"]).memory_info().rss)
    return max(sizes, default=0) / 2**20


async def measure(
    browser: Any, url: str, old: dict[str, bytes] | None, scenario: Scenario, args: argparse.Namespace
) -> Figures:
    figures = Figures()
    total = scenario.devices + scenario.registered
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        if old is not None:  # the old dashboard's files in place of today's, from the same hub
            is_static: Callable[[str], bool] = lambda u: bool(re.match(r"^[^#?]*://[^/]+/(static/.*)?([?#].*)?$", u))  # noqa: E731

            async def serve_old(route: Any) -> None:
                name = route.request.url.split("?")[0].rsplit("/", 1)[-1] or "index.html"
                kind = {"js": "text/javascript", "css": "text/css", "html": "text/html"}[name.rsplit(".", 1)[-1]]
                await route.fulfill(status=200, body=old[name], headers={"Content-Type": kind})

            await context.route(is_static, serve_old)
        await context.add_init_script(PROBE)
        page = await context.new_page()
        cdp = await context.new_cdp_session(page)
        browser_cdp = await browser.new_browser_cdp_session()
        await cdp.send("Performance.enable")
        started = time.monotonic()
        await page.goto(url)
        summary = page.locator("#summary")
        await summary.filter(has_text=re.compile(rf"^{total} devices")).wait_for(timeout=120_000)
        figures.shown_after_s = time.monotonic() - started
        await asyncio.sleep(args.warmup)

        # Idle window: busy share, frames, long tasks, memory.
        figures.long_load_ms = max(await page.evaluate("window.__bench.longtasks"), default=0.0)
        await page.evaluate("window.__bench.longtasks = []; window.__bench.frames = 0")
        before = await metrics(cdp)
        window_end = time.monotonic() + args.seconds
        while (left := window_end - time.monotonic()) > 0:
            figures.rss.append(await renderer_rss_mib(browser_cdp))
            await asyncio.sleep(min(5.0, left))
        after = await metrics(cdp)
        bench = await page.evaluate("window.__bench")
        figures.busy = (after["TaskDuration"] - before["TaskDuration"]) / (after["Timestamp"] - before["Timestamp"])
        figures.fps_idle = bench["frames"] / (after["Timestamp"] - before["Timestamp"])
        figures.long_count = len(bench["longtasks"])
        figures.long_max_ms = max(bench["longtasks"], default=0.0)
        figures.elements = await page.evaluate("document.getElementsByTagName('*').length")
        figures.height_px = await page.evaluate("document.documentElement.scrollHeight")

        # Scrolling the device list, then typing into the filter.
        figures.fps_scroll = await page.evaluate(SCROLL, SCROLL_S)
        await page.focus("#filter-text")
        await page.evaluate("window.__bench.keys = []")
        for i, key in enumerate(QUERY):
            if i:
                await asyncio.sleep(0.3)
            await page.keyboard.press(key)
        figures.filtered_ms = await page.evaluate(FILTERED, QUERY)
        await page.keyboard.press("Control+A")
        await page.keyboard.press("Backspace")  # back to the whole fleet
        await asyncio.sleep(1.0)
        bench = await page.evaluate("window.__bench")
        figures.key_ms = bench["keys"]
        figures.long_max_all_ms = max([figures.long_max_ms, *bench["longtasks"]])
        figures.rss.append(await renderer_rss_mib(browser_cdp))
        if args.soak and old is None and scenario.devices >= 1000:
            print(f"  soak: renderer RSS every 15 s for {args.soak:g} s")
            soak_end = time.monotonic() + args.soak
            while time.monotonic() < soak_end:
                await asyncio.sleep(min(15.0, max(0.0, soak_end - time.monotonic())))
                figures.rss.append(await renderer_rss_mib(browser_cdp))
                print(f"    {figures.rss[-1]:.0f} MiB")
        await browser_cdp.detach()
    finally:
        await context.close()
    return figures


async def metrics(cdp: Any) -> dict[str, float]:
    return {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}


def table(results: dict[str, dict[str, Figures]]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    rows: list[tuple[str, Callable[[Figures], str]]] = [
        ("list shown after (s)", lambda f: "-" if f.shown_after_s is None else f"{f.shown_after_s:.1f}"),
        ("longest task loading (ms)", lambda f: ms(f.long_load_ms)),
        ("main thread busy", lambda f: f"{100 * f.busy:.0f}%"),
        ("frames/s idle / scrolling", lambda f: f"{f.fps_idle:.0f} / {f.fps_scroll:.0f}"),
        ("long tasks idle (max ms)", lambda f: f"{f.long_count} ({ms(f.long_max_ms)})"),
        ("longest task overall (ms)", lambda f: ms(f.long_max_all_ms)),
        ("keystroke to next frame (ms)", lambda f: f"{ms(min(f.key_ms, default=0))}-{ms(max(f.key_ms, default=0))}"),
        ("filter until list drawn (ms)", lambda f: ms(f.filtered_ms)),
        ("renderer RSS (MiB)", lambda f: f"{min(f.rss, default=0):.0f}-{max(f.rss, default=0):.0f}"),
        ("DOM elements (page px)", lambda f: f"{f.elements:,} ({f.height_px:,})"),
    ]  # fmt: skip
    columns = [(s, page) for s, pages in results.items() for page in pages]
    head = ["", *[f"{s} {page}" for s, page in columns]]
    body = [[label, *[show(results[s][page]) for s, page in columns]] for label, show in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [head, *body])


async def run(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    old = None if args.no_baseline else old_static_files(args.baseline)
    results: dict[str, dict[str, Figures]] = {}
    per_page = 30 + args.warmup + args.seconds + SCROLL_S + 0.3 * len(QUERY) + 5
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for key in args.only.split(","):
                scenario = SCENARIOS[key]
                print(f"{scenario.name}: starting the hub and the fleet", flush=True)
                pages = 1 if old is None else 2
                async with fleet_hub(scenario, 120 + pages * per_page + args.soak) as (http, token):
                    url = f"{http}/#token={token}"
                    results[scenario.name] = {}
                    if old is not None:
                        print(f"  measuring the {args.baseline} dashboard", flush=True)
                        results[scenario.name]["old"] = await measure(browser, url, old, scenario, args)
                    print("  measuring the dashboard", flush=True)
                    results[scenario.name]["new"] = await measure(browser, url, None, scenario, args)
        finally:
            await browser.close()
    print(f"\nwarm-up {args.warmup:g} s, idle window {args.seconds:g} s, 1440x900, {psutil.cpu_count()} CPUs")
    print(table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring [20]")
    parser.add_argument("--seconds", type=float, default=30.0, help="idle measuring window [30]")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"scenarios, of {', '.join(SCENARIOS)}")
    parser.add_argument("--soak", type=float, default=0.0, help="then sample renderer RSS for this long [0]")
    parser.add_argument("--baseline", default=BASELINE, help=f"git revision of the baseline dashboard [{BASELINE}]")
    parser.add_argument("--no-baseline", action="store_true", help="measure today's dashboard only")
    args = parser.parse_args()
    unknown = set(args.only.split(",")) - SCENARIOS.keys()
    if unknown:
        parser.error(f"--only: unknown scenario {', '.join(sorted(unknown))} (of {', '.join(SCENARIOS)})")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
