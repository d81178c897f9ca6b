"""Webhook benchmark: a threshold crossing to the webhook at the receiver, and deliveries/s.

The hub runs as ``iothub run`` in its own process; the device (aiomqtt) and the receiver (asyncio's
own HTTP/1.1 server, keep-alive) run here.

(a) Latency: a rule ``temperature > 30`` (clear 20); the device alternates crossing values, one at a
    time, and each firing or resolving webhook is timed from just before the telemetry PUBLISH to its
    arrival at the receiver. Baseline in the same run: the same PUBLISH (QoS 1) to its PUBACK, which
    the hub sends once the message is committed (durable ack).
(b) Throughput: 100 endpoints subscribed to device.online/offline; devices connect and leave, and
    deliveries/s are counted from the first connection to the last delivery. Baseline: the same
    number of POSTs straight from one httpx client per endpoint at the same concurrency (4 each).

    python bench/webhooks.py [--crossings 200] [--devices 20] [--endpoints 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

RULE = {"kind": "metric", "name": "hot", "metric": "temperature", "op": ">", "threshold": 30, "clear": 20}


class Receiver:
    """Counts POSTs and notes when each arrived, by the value it reports."""

    def __init__(self) -> None:
        self.arrived: dict[Any, float] = {}
        self.count = 0
        self.changed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
                body = await reader.readexactly(length)
                now = time.perf_counter()
                self.count += 1
                message = json.loads(body)
                if message["type"].startswith("alert."):
                    self.arrived[message["data"]["value"]] = now
                self.changed.set()
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def until(self, check: Any, within: float) -> None:
        async with asyncio.timeout(within):
            while not check():
                self.changed.clear()
                await self.changed.wait()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, ms: list[float]) -> str:
    return f"{name:34} p50 {pct(ms, 0.5):6.1f} ms  p99 {pct(ms, 0.99):6.1f} ms  max {max(ms):6.1f} ms  (n={len(ms)})"


async def start_hub(data: Path) -> tuple[asyncio.subprocess.Process, str, str, str]:
    env = {
        **os.environ, "IOTHUB_DATA_DIR": str(data), "IOTHUB_LOG_LEVEL": "warning",
        "IOTHUB_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true", "IOTHUB_RULES": json.dumps([RULE]),
    }  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iothub", "run",
        "--grpc-port", "0", "--mqtt-port", "0", "--mqtt-ws-port", "0", "--http-port", "0",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    listening = (await proc.stdout.readline()).decode()
    found = re.match(r"iothub listening: mqtt=(\S+) mqtt_ws=\S+ http=(\S+)", listening)
    token = re.search(r"\(shown once\): (\S+)", (await proc.stdout.readline()).decode())
    assert found, listening
    assert token, listening
    return proc, found[1], found[2], token[1]


async def latency(http: httpx.AsyncClient, mqtt: str, receiver: Receiver, url: str, crossings: int) -> None:
    await http.post("/api/v1/webhooks", json={"url": url, "events": ["alert.firing", "alert.resolved"]})
    secret = (await http.post("/api/v1/devices", json={"id": "bench-hot"})).json()["secret"]
    host, port = mqtt.rsplit(":", 1)
    webhook_ms, puback_ms = [], []
    async with aiomqtt.Client(host, int(port), identifier="bench-hot", username="bench-hot", password=secret) as dev:
        for i in range(crossings + 10):  # the first 10 warm up
            value = 1000 + i if i % 2 == 0 else -i  # firing, then resolving
            sent = time.perf_counter()
            await dev.publish("devices/bench-hot/telemetry", json.dumps({"metrics": {"temperature": value}}), qos=1)
            acked = time.perf_counter()
            await receiver.until(lambda v=value: v in receiver.arrived, 10)
            if i >= 10:
                puback_ms.append((acked - sent) * 1000)
                webhook_ms.append((receiver.arrived[value] - sent) * 1000)
    print(summary("(a) crossing -> webhook received", webhook_ms))
    print(summary("    baseline: PUBLISH -> PUBACK", puback_ms))


async def throughput(
    http: httpx.AsyncClient, mqtt: str, receiver: Receiver, url: str, devices: int, endpoints: int
) -> None:
    for _ in range(endpoints):
        await http.post("/api/v1/webhooks", json={"url": url, "events": ["device.online", "device.offline"]})
    secrets = {}
    for i in range(devices):
        secrets[f"bench-{i}"] = (await http.post("/api/v1/devices", json={"id": f"bench-{i}"})).json()["secret"]
    host, port = mqtt.rsplit(":", 1)
    expected = receiver.count + devices * 2 * endpoints
    started = time.perf_counter()
    for device_id, secret in secrets.items():
        async with aiomqtt.Client(host, int(port), identifier=device_id, username=device_id, password=secret):
            pass
    await receiver.until(lambda: receiver.count >= expected, 120)
    took = time.perf_counter() - started
    total = devices * 2 * endpoints
    print(f"(b) {total} deliveries to {endpoints} endpoints: {total / took:8.0f} deliveries/s ({took:.2f} s)")

    body = json.dumps({"type": "device.online", "data": {"device_id": "x", "online": True}}).encode()
    clients = [httpx.AsyncClient(limits=httpx.Limits(max_connections=4)) for _ in range(endpoints)]
    per = total // endpoints

    async def post_all(client: httpx.AsyncClient) -> None:
        sem = asyncio.Semaphore(4)

        async def one() -> None:
            async with sem:
                await client.post(url, content=body, headers={"content-type": "application/json"})

        await asyncio.gather(*(one() for _ in range(per)))

    started = time.perf_counter()
    await asyncio.gather(*(post_all(c) for c in clients))
    took = time.perf_counter() - started
    print(f"    baseline: plain httpx POSTs   {total / took:8.0f} posts/s ({took:.2f} s)")
    for c in clients:
        await c.aclose()


async def main(args: argparse.Namespace) -> None:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0, backlog=1024)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    with tempfile.TemporaryDirectory() as data:
        proc, mqtt, http_url, token = await start_hub(Path(data) / "data")
        try:
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=http_url, headers=headers, timeout=30) as http:
                await latency(http, mqtt, receiver, url, args.crossings)
                await throughput(http, mqtt, receiver, url, args.devices, args.endpoints)
        finally:
            proc.terminate()
            await proc.wait()
            server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crossings", type=int, default=200)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--endpoints", type=int, default=100)
    asyncio.run(main(parser.parse_args()))
