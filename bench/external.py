"""Scale-out benchmark: hub processes on an external Mosquitto, and the InfluxDB store into VictoriaMetrics.

1. Messages/s stored end to end by one and by two ``iothub run`` processes (``--only ingest``, one
   data dir, shared subscription). Each round gets a fresh Mosquitto and data dir; the hubs start
   once so that their persistent sessions exist and stop; then ``--messages`` QoS 1 telemetry
   messages are published (queued by Mosquitto for the sessions); then the hubs start again and drain
   them into the shared store. The figure is the hubs' drain rate, not the publisher's; the CPU the
   hub processes used meanwhile is printed beside it (one hub keeps about one core busy). Expected:
   two processes >= 1.6x one, on a machine with a core to spare for each.
2. Points/s of the InfluxDB store's write path (line protocol built from the hub's points, written
   with ``influxdb-client``'s async API, the batch's events committed to SQLite) into a
   VictoriaMetrics started here, beside ``influxdb-client`` alone writing prepared line protocol.
   Expected: >= 150,000 points/s.

    python -m bench.external [--messages 60000] [--points 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import aiomqtt
import psutil
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.domain.write_precision import WritePrecision

from iothub.hub.settings import InfluxSettings
from iothub.hub.store.base import Batch, PendingEvent, Point
from iothub.hub.store.influx import InfluxStore
from iothub.hub.store.influx_protocol import line_protocol
from iothub.hub.store.sqlite import SqliteStore
from tests.conformance.brokers import mosquitto
from tests.external_hubs import admin_token, hub_process
from tests.victoria import victoria_metrics

BROKER = "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 1000\n"
PUBLISHERS = 8
DEADLINE_S = 300.0
METRICS = ("temperature", "humidity", "pressure", "voltage", "current")


def stored_count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE type = 'telemetry'").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


async def publish(port: int, total: int) -> None:
    async def one(index: int) -> None:
        device = f"bench-{index:04d}"
        async with aiomqtt.Client("127.0.0.1", port, identifier=device, max_inflight_messages=100) as client:
            for seq in range(index, total, PUBLISHERS):
                body = f'{{"seq":{seq},"metrics":{{"temperature":{20 + seq % 10},"on":true}}}}'
                await client.publish(f"devices/{device}/telemetry", body.encode(), qos=1)

    async with asyncio.TaskGroup() as tasks:
        for index in range(PUBLISHERS):
            tasks.create_task(one(index))


async def hubs_round(processes: int, total: int) -> tuple[float, float]:
    """Messages/s ``processes`` hubs store of a backlog of ``total`` messages, and the CPU cores they used."""
    with tempfile.TemporaryDirectory(prefix="iothub-bench-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        admin_token(data)
        names = [f"bench-hub-{i}" for i in range(processes)]
        async with mosquitto(root / "broker", extra=BROKER) as port:
            for name in names:  # their sessions and shared subscriptions exist from now on
                async with hub_process(data, port, name, "ingest") as hub:
                    await hub.stop()
            await publish(port, total)
            async with contextlib.AsyncExitStack() as stack:
                pids = []
                for name in names:
                    hub = await stack.enter_async_context(hub_process(data, port, name, "ingest"))
                    pids.append(hub.proc.pid)
                # The clock runs from the first stored message seen to the last (polled every 20 ms
                # from the hubs' launch), so the processes' start-up is not counted.
                return await _drain(data / "iothub.db", total, [psutil.Process(pid) for pid in pids])
    raise AssertionError("unreachable")


def _cpu_s(processes: list[psutil.Process]) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)


async def _drain(db: Path, total: int, hubs: list[psutil.Process]) -> tuple[float, float]:
    """(messages/s, CPU cores the hub processes kept busy) from the first stored message to the last."""
    first: tuple[float, int, float] | None = None
    done = 0
    async with asyncio.timeout(DEADLINE_S):
        while done < total:
            await asyncio.sleep(0.02)  # polling the shared store
            done = await asyncio.to_thread(stored_count, db)
            if first is None and done:
                first = (time.perf_counter(), done, _cpu_s(hubs))
    assert first is not None
    elapsed = time.perf_counter() - first[0]
    return (total - first[1]) / elapsed, (_cpu_s(hubs) - first[2]) / elapsed


async def influx_round(points: int, batch_messages: int) -> tuple[float, float]:
    """Points/s of the hub's write path and of influxdb-client alone, into VictoriaMetrics."""
    with tempfile.TemporaryDirectory(prefix="iothub-bench-") as tmp:
        root = Path(tmp)
        async with victoria_metrics(root) as url:
            settings = InfluxSettings(url=url, org="bench", bucket="bench")
            now = time.time_ns() // 1_000_000 - 3_600_000
            per_batch = batch_messages * len(METRICS)
            batches = []
            for b in range(points // per_batch):
                batch = Batch()
                for m in range(batch_messages):
                    ts = now + b * batch_messages + m
                    device = f"d-{m % 500:04d}"
                    batch.points.extend(Point(device, metric, ts, 20.0 + m % 7) for metric in METRICS)
                    batch.events.append(PendingEvent("telemetry", ts, device, {"seq": m}))
                batches.append(batch)
            store = InfluxStore(settings, SqliteStore(root / "events.db"), lambda _: {})
            await store.open()
            try:
                started = time.perf_counter()
                for batch in batches:
                    await store.write(batch)
                hub_rate = len(batches) * per_batch / (time.perf_counter() - started)
            finally:
                await store.close()
            lines = [line_protocol(batch.points, "plain") for batch in batches]
            async with InfluxDBClientAsync(url=url, token="", org="bench") as client:
                write = client.write_api()
                started = time.perf_counter()
                for chunk in lines:
                    await write.write(bucket="bench", record=chunk, write_precision=WritePrecision.MS)  # type: ignore[arg-type]
                plain_rate = len(batches) * per_batch / (time.perf_counter() - started)
            return hub_rate, plain_rate


async def main(args: argparse.Namespace) -> None:
    print(f"scale-out benchmark: {os.cpu_count()} cores")
    print(f"\n1. a backlog of {args.messages:,} QoS 1 messages on Mosquitto, stored end to end (SQLite, shared)")
    one, one_cpu = await hubs_round(1, args.messages)
    print(f"  one hub process:   {one:>10,.0f} messages/s   hub CPU {one_cpu:.2f} cores")
    two, two_cpu = await hubs_round(2, args.messages)
    print(f"  two hub processes: {two:>10,.0f} messages/s   hub CPU {two_cpu:.2f} cores   "
          f"({two / one:.2f}x one; expected >= 1.6x with cores to spare)")  # fmt: skip
    print(f"  {os.cpu_count()} cores on this machine, load average {os.getloadavg()[0]:.1f} now")
    print(f"\n2. InfluxDB store into VictoriaMetrics: {args.points:,} points, batches of {args.batch} messages "
          f"x {len(METRICS)} metrics")  # fmt: skip
    hub_rate, plain_rate = await influx_round(args.points, args.batch)
    print(f"  hub write path:        {hub_rate:>10,.0f} points/s   (expected >= 150,000)")
    print(f"  influxdb-client alone: {plain_rate:>10,.0f} points/s   (hub/plain {hub_rate / plain_rate:.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=2000, help="messages per store batch (ingest's default)")
    asyncio.run(main(parser.parse_args()))
