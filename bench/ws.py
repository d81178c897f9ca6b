"""WebSocket benchmark: the hub's /api/v1/ws beside its SSE stream, and command round trips.

Delivery: the same hub server as ``bench/sse.py`` (an event source feeding ingest at a fixed rate:
ingest, store, fan-out, the channel), with clients in a process of their own. WebSocket clients are
``websockets``' sans-I/O protocol on a plain asyncio transport (no task per client, parsing every
frame); SSE clients are ``bench/sse.py``'s. Latency is source to client, read from the last event
of each read. Scenarios: (a) 1,000 clients at 20 events/s; (b) 100 clients at 200 events/s.

Commands: ``iothub run`` and ``iothub simulate`` (devices that answer ``ping``), then the same
number of concurrent callers sending ``ping`` over one WebSocket connection each, and over REST
(``POST /api/v1/devices/{id}/commands/ping``, one keep-alive connection each) as the baseline.
Every run is bounded by --seconds.

    python bench/ws.py [--seconds 6] [--only a,b,commands]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import sse

SENT = b'"sent":'


class _WsReader(asyncio.Protocol):
    """One WebSocket client: handshake, subscribe to everything, count telemetry frames."""

    def __init__(self, url: str, token: str, stats: dict[str, Any]) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.token = token
        self.stats = stats
        self.transport: Any = None  # a stream transport (uvloop's is not an asyncio.Transport)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        request = self.protocol.connect()
        request.headers["Authorization"] = f"Bearer {self.token}"
        self.protocol.send_request(request)
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)

    def data_received(self, chunk: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(chunk)
        stats = self.stats
        last: bytes | None = None
        for event in protocol.events_received():
            if isinstance(event, Response):
                subscribe = {"type": "subscribe", "id": "all", "types": ["telemetry"]}
                protocol.send_text(json.dumps(subscribe).encode())
                stats["subscribed"] += 1
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT and stats["window"]:
                data = bytes(event.data)
                if data.startswith(b'{"type":"event"'):
                    stats["events"] += 1
                    last = data
        self._flush()
        if last is not None:
            at = last.rfind(SENT)
            if at >= 0:
                end = at + len(SENT)
                stop_at = min(i for i in (last.find(b",", end), last.find(b"}", end)) if i >= 0)
                stats["latency"].append(time.time() * 1000 - float(last[end:stop_at]))


async def run_ws_clients(args: argparse.Namespace) -> dict[str, Any]:
    stats: dict[str, Any] = {"events": 0, "latency": [], "window": False, "subscribed": 0}
    loop = asyncio.get_running_loop()
    url = f"ws://127.0.0.1:{args.port}/api/v1/ws"
    readers = []
    for _ in range(args.clients):
        transport, _ = await loop.create_connection(lambda: _WsReader(url, args.token, stats), "127.0.0.1", args.port)
        readers.append(transport)
    for _ in range(600):  # bounded: 30 s
        if stats["subscribed"] == args.clients:
            break
        await asyncio.sleep(0.05)
    else:
        raise SystemExit(f"only {stats['subscribed']} of {args.clients} clients subscribed in 30 s")
    await asyncio.sleep(sse.START_S)  # the source has been running since the server started
    stats["window"] = True
    started = time.monotonic()
    await asyncio.sleep(args.seconds)
    elapsed = time.monotonic() - started
    stats["window"] = False  # the source runs on: steady state, nothing to drain
    for transport in readers:
        transport.close()
    latency = sorted(stats["latency"])
    return {"delivered": stats["events"], "rate": stats["events"] / elapsed, **percentiles(latency)}


def percentiles(values: list[float]) -> dict[str, float]:
    def pick(q: float) -> float:
        return float(values[min(len(values) - 1, int(q * len(values)))]) if values else float("nan")

    return {"p50": pick(0.5), "p99": pick(0.99)}


def delivery(kind: str, clients: int, rate: float, seconds: float) -> dict[str, Any]:
    """The hub server of bench/sse.py, with WebSocket or SSE clients in their own process."""
    sse_script = str(Path(sse.__file__).resolve())
    # The source runs on after the clients' window (it starts when they have all subscribed) and
    # is stopped when they are done: connecting 1,000 clients takes a while on a loaded machine.
    source_s = seconds + 60
    with subprocess.Popen(
        [sys.executable, sse_script, "--serve", "hub", "--rate", str(rate), "--seconds", str(source_s)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as server:  # fmt: skip
        assert server.stdout is not None
        ready = server.stdout.readline().split()
        if not ready or ready[0] != "READY":
            raise SystemExit("the hub did not start")
        port, token = ready[1], ready[2]
        proc = psutil.Process(server.pid)
        proc.cpu_percent()
        script = os.path.abspath(__file__) if kind == "ws" else sse_script
        client = subprocess.run(
            [sys.executable, script, "--clients", str(clients), "--port", port, "--token", token,
             "--seconds", str(seconds), "--tail", "0"],
            capture_output=True, text=True, timeout=seconds + 60, check=False,
        )  # fmt: skip
        cpu = proc.cpu_percent()
        rss = proc.memory_info().rss / 2**20
        server.terminate()
        server.wait(timeout=30)
    if client.returncode != 0:
        raise SystemExit(f"{kind} clients failed:\n{client.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(client.stdout.strip().splitlines()[-1])
    return result | {"expected": clients * rate, "cpu": cpu, "rss": rss}


def scenario(title: str, clients: int, rate: float, seconds: float) -> None:
    print(f"\n{title}: {clients} clients x {rate:g} events/s = {clients * rate:,.0f} deliveries/s")
    print(f"  {'':9} {'delivered/s':>12} {'share':>8} {'p50 ms':>9} {'p99 ms':>9} {'CPU':>7} {'RSS MiB':>7}")
    ws = delivery("ws", clients, rate, seconds)
    print(sse.row("websocket", ws), flush=True)
    base = delivery("sse", clients, rate, seconds)
    print(sse.row("sse", base), flush=True)
    print(f"  websocket/sse: delivered x{ws['rate'] / max(base['rate'], 1e-9):.2f}, p99 x{ws['p99'] / base['p99']:.2f}")


# -- commands ------------------------------------------------------------------------------------


async def ws_commands(url: str, token: str, devices: list[str], callers: int, seconds: float) -> list[float]:
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def caller(n: int) -> None:
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            for i in range(1_000_000):  # bounded by the deadline
                if time.monotonic() >= deadline:
                    return
                started = time.perf_counter()
                device = devices[(n + i) % len(devices)]
                await ws.send(json.dumps({"type": "command", "ref": str(i), "device": device, "name": "ping"}))
                async with asyncio.timeout(10):
                    answer = json.loads(await ws.recv())
                if answer.get("status") != "ok":
                    raise SystemExit(f"command failed: {answer}")
                latencies.append((time.perf_counter() - started) * 1000)

    async with asyncio.TaskGroup() as tasks:
        for n in range(callers):
            tasks.create_task(caller(n))
    return latencies


async def rest_commands(base: str, token: str, devices: list[str], callers: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def caller(n: int) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as http:
            for i in range(1_000_000):  # bounded by the deadline
                if time.monotonic() >= deadline:
                    return
                started = time.perf_counter()
                device = devices[(n + i) % len(devices)]
                answer = await http.post(f"/api/v1/devices/{device}/commands/ping", json={})
                if answer.status_code != 200 or not answer.json()["ok"]:
                    raise SystemExit(f"command failed: {answer.status_code} {answer.text}")
                latencies.append((time.perf_counter() - started) * 1000)

    async with asyncio.TaskGroup() as tasks:
        for n in range(callers):
            tasks.create_task(caller(n))
    return latencies


def commands(seconds: float, devices: int = 20, callers: int = 20) -> None:
    print(f"\n(commands) {callers} concurrent callers, ping to {devices} simulated devices")
    print(f"  {'':9} {'round trips/s':>14} {'p50 ms':>9} {'p99 ms':>9}")
    with tempfile.TemporaryDirectory() as data:
        hub = subprocess.Popen(
            [sys.executable, "-m", "iothub", "run", "--grpc-port", "0", "--data-dir", data,
             "--mqtt-port", "0", "--mqtt-ws-port", "0", "--http-port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        sim = None
        try:
            assert hub.stdout is not None
            found = re.search(r"mqtt=(\S+) .* http=http://(\S+)", hub.stdout.readline())
            token = re.search(r"\(shown once\): (\S+)", hub.stdout.readline())
            if found is None or token is None:
                raise SystemExit("the hub did not start")
            mqtt, http = found[1], found[2]
            sim = subprocess.Popen(
                [sys.executable, "-m", "iothub", "simulate", "--broker", f"mqtt://{mqtt}",
                 "--devices", str(devices), "--rate", "0.2", "--duration", str(2 * seconds + 20),
                 "--prefix", "cmd", "--data-dir", data],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            ids = [f"cmd-{i:04d}" for i in range(devices)]
            wait_for_telemetry(f"http://{http}", token[1], ids)
            for name, measure in (
                ("websocket", ws_commands(f"ws://{http}/api/v1/ws", token[1], ids, callers, seconds)),
                ("rest", rest_commands(f"http://{http}", token[1], ids, callers, seconds)),
            ):
                latencies = sorted(asyncio.run(measure))
                p = percentiles(latencies)
                print(f"  {name:9} {len(latencies) / seconds:>14,.0f} {p['p50']:>9.1f} {p['p99']:>9.1f}", flush=True)
        finally:
            for proc in (sim, hub):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=30)


def wait_for_telemetry(base: str, token: str, ids: list[str]) -> None:
    """Until every device has published (so it is subscribed to its commands); at most 30 s."""
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(300):
        devices = httpx.get(f"{base}/api/v1/devices", headers=headers, timeout=10).json()["devices"]
        ready = {d["id"] for d in devices if d.get("last_seen")}
        if ready >= set(ids):
            return
        time.sleep(0.1)
    raise SystemExit("the simulated devices did not all come online in 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--only", default="a,b,commands")
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="-", help=argparse.SUPPRESS)
    parser.add_argument("--tail", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.clients is not None:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
            print(json.dumps(loop.run(run_ws_clients(args))))
        return

    wanted = set(args.only.split(","))
    print(f"WebSocket benchmark, {os.cpu_count()} cores, {args.seconds:g} s per run (latency: source to client)")
    if "a" in wanted:
        scenario("(a)", 1000, 20, args.seconds)
    if "b" in wanted:
        scenario("(b)", 100, 200, args.seconds)
    if "commands" in wanted:
        commands(args.seconds)


if __name__ == "__main__":
    main()
