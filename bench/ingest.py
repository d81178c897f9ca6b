"""Ingest benchmark: simulated devices publishing as fast as acks allow, for a bounded time.

For each target a fresh process runs the server side, and the real ``iothub simulate`` (rate 0, in
a process of its own) is the load:

* ``hub``: the hub's broker, ingest and SQLite store; a fan-out consumer times each message from
  the device's ``ts`` to the moment its event is published (after the store committed it);
* ``plain``: amqtt 0.12.1 as shipped (default plugins, loopback listener) with a plain aiomqtt
  subscriber on ``devices/+/telemetry`` in the same process, timing publish-to-receive.

Prints messages/s delivered end to end, p50/p99 latency, RSS of the server process, and hub/plain.
Every loop is bounded by ``--seconds`` plus a drain deadline.

    python bench/ingest.py --devices 50 --seconds 10 [--qos 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

DRAIN_S = 15.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def _load(
    port: int, args: argparse.Namespace, data_dir: str | None = None
) -> tuple[asyncio.subprocess.Process, float]:
    """The real simulator; registered in the hub's registry, or anonymous for plain amqtt."""
    login = ["--data-dir", data_dir] if data_dir else ["--anonymous"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iothub", "simulate", "--broker", f"mqtt://127.0.0.1:{port}",
        "--devices", str(args.devices), "--rate", str(args.rate), "--qos", str(args.qos),
        "--duration", str(args.seconds), "--prefix", "bench", "--seed", "1", *login,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return proc, time.monotonic()


async def _finish(proc: asyncio.subprocess.Process) -> int:
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    line = out.decode().strip().splitlines()[-1]
    return int(line.split()[1])  # "sent N messages in ..."


def _result(sent: int, received: list[float], elapsed: float) -> dict[str, Any]:
    return {
        "sent": sent,
        "delivered": len(received),
        "rate": len(received) / elapsed,
        "p50": percentile(received, 50),
        "p99": percentile(received, 99),
        "rss_mib": psutil.Process().memory_info().rss / 2**20,
    }


async def serve_hub(args: argparse.Namespace) -> dict[str, Any]:
    from iothub.hub.events import HubEvent
    from iothub.hub.settings import load_settings
    from iothub.runner import serve, tune_gc

    with tempfile.TemporaryDirectory() as data:
        settings = load_settings(None, data_dir=Path(data), mqtt={"port": 0, "ws_port": None}, http={"port": 0})
        async with serve(settings) as running:
            tune_gc()  # as `iothub run` does
            sub = running.hub.bus.subscribe("bench", maxsize=1_000_000)
            latencies: list[float] = []
            proc, started = await _load(running.ports["mqtt"], args, data)
            finish = asyncio.create_task(_finish(proc))
            sent: int | None = None
            deadline = started + args.seconds + DRAIN_S
            while time.monotonic() < deadline and (sent is None or len(latencies) < sent):
                try:
                    batch = await asyncio.wait_for(sub.next_batch(), 0.5)
                except TimeoutError:
                    batch = []
                now = time.time() * 1000
                latencies.extend(now - e.ts for e in batch if isinstance(e, HubEvent) and e.type == "telemetry")
                if sent is None and finish.done():
                    sent = finish.result()
            elapsed = time.monotonic() - started
            result = _result(sent if sent is not None else await finish, latencies, elapsed)
            result["stored"] = (await running.hub.store.stats())["points"]  # type: ignore[attr-defined]
            m = running.hub.metrics
            batches = m.store_batch_size._sum.get(), m.store_batch_seconds._sum.get()
            count = sum(b.get() for b in m.store_batch_seconds._buckets)
            result["batch_msgs"] = batches[0] / max(count, 1)
            result["batch_ms"] = batches[1] / max(count, 1) * 1000
            return result


async def serve_plain(args: argparse.Namespace) -> dict[str, Any]:
    import aiomqtt
    from amqtt.broker import Broker

    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}})
    await broker.start()
    port = broker._servers["default"].instance.sockets[0].getsockname()[1]
    latencies: list[float] = []
    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-subscriber") as client:
            await client.subscribe("devices/+/telemetry", qos=args.qos)
            proc, started = await _load(port, args)
            finish = asyncio.create_task(_finish(proc))
            sent: int | None = None
            deadline = started + args.seconds + DRAIN_S
            messages = aiter(client.messages)
            while time.monotonic() < deadline and (sent is None or len(latencies) < sent):
                try:
                    message = await asyncio.wait_for(anext(messages), 0.5)
                except TimeoutError:
                    message = None
                if message is not None:
                    assert isinstance(message.payload, bytes)
                    latencies.append(time.time() * 1000 - json.loads(message.payload)["ts"])
                if sent is None and finish.done():
                    sent = finish.result()
            elapsed = time.monotonic() - started
            return _result(sent if sent is not None else await finish, latencies, elapsed)
    finally:
        await broker.shutdown()


def run_target(target: str, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--serve", target, "--devices", str(args.devices),
           "--seconds", str(args.seconds), "--qos", str(args.qos), "--rate", str(rate)]  # fmt: skip
    if args.no_uvloop:
        cmd.append("--no-uvloop")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 120, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{target} run failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--qos", type=int, choices=(1, 2), default=1)
    parser.add_argument("--paced", type=float, default=1000.0, help="total msg/s of the paced run [1000]")
    parser.add_argument("--no-uvloop", action="store_true", help="run both servers on asyncio's own loop")
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=("hub", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        runner = serve_hub if args.serve == "hub" else serve_plain
        if args.no_uvloop:
            print(json.dumps(asyncio.run(runner(args))))
        else:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
                print(json.dumps(loop_runner.run(runner(args))))
        return

    print(f"ingest benchmark: {args.devices} devices, QoS {args.qos}, {args.seconds:g} s a run, "
          f"{'asyncio' if args.no_uvloop else 'uvloop'}, {os.cpu_count()} cores")  # fmt: skip
    for title, rate in (
        ("as fast as acks allow", 0.0),
        (f"paced at {args.paced:g} msg/s", args.paced / args.devices),
    ):
        print(f"\n{title}")
        table(run_target("hub", args, rate), run_target("plain", args, rate))


def table(hub: dict[str, Any], plain: dict[str, Any]) -> None:
    rows = [
        ("messages/s end to end", "rate", "{:,.0f}"),
        ("p50 latency, ms", "p50", "{:.1f}"),
        ("p99 latency, ms", "p99", "{:.1f}"),
        ("server RSS, MiB", "rss_mib", "{:.0f}"),
        ("sent by the devices", "sent", "{:,}"),
        ("delivered (stored for the hub)", "delivered", "{:,}"),
    ]
    print(f"{'':32}{'hub':>12}{'plain amqtt':>14}{'hub/plain':>11}")
    for label, key, fmt in rows:
        ratio = hub[key] / plain[key] if plain[key] else float("nan")
        print(f"{label:32}{fmt.format(hub[key]):>12}{fmt.format(plain[key]):>14}{ratio:>11.2f}")
    print(
        f"hub: {hub['stored']:,} points in the store; mean batch {hub['batch_msgs']:.0f} messages "
        f"committed in {hub['batch_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
