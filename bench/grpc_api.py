"""gRPC benchmark: live streams beside SSE, downsampled history beside REST, command round trips.

Each measurement starts a hub in a process of its own and runs its clients in another (uvloop in
both); the baseline is measured in the same run, against the same hub build.

(a) Subscribe: 100 gRPC streams at 500 events/s (50,000 deliveries/s), then 100 SSE clients at the
    same rate: delivered/s and source-to-client latency (p50/p99), hub CPU and RSS. Events go the
    whole way: ingest, store, fan-out, stream. Both kinds of client take the send time of the newest
    event of each message (gRPC) or read (SSE): a batch's latency is that of its newest event.
(b) Query: one metric with 1,000,000 stored points, downsampled to 500 buckets (avg), by gRPC Query
    and by the REST API: p50/p99 ms over sequential queries (after 3 unmeasured ones).
(c) SendCommand: a device that answers at once (an MQTT client in the hub's process), 8 concurrent
    callers: round trips/s and p50/p99 ms, gRPC and REST.

    python bench/grpc_api.py [--seconds 6] [--only a,b,c]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: bench.sse

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from typing import Any

import psutil

START_S = 1.5  # clients connect before the timed window starts
DRAIN_S = 1.0
POINTS = 1_000_000
BUCKETS = 500
QUERIES = 40
CALLERS = 8


# -- the hub (run with --serve) -------------------------------------------------------------------


async def _respond(hub: Any, device_id: str, secret: str, port: int) -> None:
    """A device that answers every command at once."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier=device_id, username=device_id, password=secret) as c:
        await c.subscribe(f"devices/{device_id}/commands/+", qos=1)
        async for message in c.messages:
            assert isinstance(message.payload, bytes)
            request = json.loads(message.payload)
            reply = {"id": request["id"], "ok": True, "result": {}}
            await c.publish(f"devices/{device_id}/responses", json.dumps(reply), qos=1)


def points_base() -> int:
    """Where the stored points start (one a millisecond): a whole number of buckets before now."""
    step = POINTS // BUCKETS
    return (int(time.time() * 1000) - POINTS) // step * step


async def _store_points(hub: Any, device_id: str, base: int) -> None:
    from iothub.hub.store.base import Batch, Point

    hub.registry.add_device(device_id, type="bench")
    for chunk in range(0, POINTS, 100_000):
        points = [Point(device_id, "v", base + i, float(i % 100)) for i in range(chunk, chunk + 100_000)]
        await hub.store.write(Batch(points=points))


async def serve_hub(args: argparse.Namespace) -> None:
    from iothub.hub.settings import load_settings
    from iothub.runner import serve, tune_gc

    with tempfile.TemporaryDirectory() as data:
        settings = load_settings(
            None, data_dir=Path(data), mqtt={"port": 0, "ws_port": None}, http={"port": 0}, grpc={"port": 0},
            log_level="warning",
        )  # fmt: skip
        async with serve(settings) as running, asyncio.TaskGroup() as tasks:
            hub = running.hub
            base = points_base()
            if args.scenario == "query":
                await _store_points(hub, "bench-q", base)
            if args.scenario == "command":
                _, secret = hub.registry.add_device("bench-cmd", type="bench")
                responder = tasks.create_task(_respond(hub, "bench-cmd", secret, running.ports["mqtt"]))
                for _ in range(200):  # until the device is online, at most 10 s
                    if (state := hub.fleet.get("bench-cmd")) is not None and state.online:
                        break
                    await asyncio.sleep(0.05)
            tune_gc()  # as `iothub run` does
            print(f"READY {running.ports['grpc']} {running.ports['http']} {hub.first_token} {base}", flush=True)
            if args.scenario == "subscribe":
                await asyncio.sleep(START_S)
                await _source(hub.ingest, args.rate, args.seconds)
                await asyncio.sleep(DRAIN_S)
            else:  # until the clients are done: the parent closes our stdin
                await asyncio.wait_for(asyncio.to_thread(sys.stdin.read), args.seconds + 300)
            if args.scenario == "command":
                responder.cancel()


async def _source(ingest: Any, rate: float, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    seq = 0
    while (now := loop.time()) - start < seconds:
        while seq < int((now - start) * rate):
            payload = json.dumps({"seq": seq, "metrics": {"sent": time.time() * 1000, "value": seq % 100}})
            ingest.on_publish("bench-src", "devices/bench-src/telemetry", payload.encode())
            seq += 1
        await asyncio.sleep(min(0.005, 1 / rate))


# -- clients (run with --clients) -----------------------------------------------------------------


def _pick(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else float("nan")


async def grpc_streams(args: argparse.Namespace) -> dict[str, Any]:
    import grpc

    from iothub.v1 import telemetry_pb2

    stats: dict[str, Any] = {"events": 0, "latency": [], "window": False}
    metadata = (("authorization", f"Bearer {args.token}"),)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") for _ in range(10)]
    request = telemetry_pb2.SubscribeRequest()

    async def stream(channel: grpc.aio.Channel) -> None:
        subscribe: grpc.aio.UnaryStreamMultiCallable[telemetry_pb2.SubscribeRequest, bytes] = channel.unary_stream(
            "/iothub.v1.TelemetryService/Subscribe", request_serializer=telemetry_pb2.SubscribeRequest.SerializeToString
        )  # responses as bytes, decoded below
        async for raw in subscribe(request, metadata=metadata):
            if stats["window"]:
                message = telemetry_pb2.SubscribeResponse.FromString(raw)
                stats["events"] += len(message.events)
                if message.events:  # the newest of the batch, as the SSE clients take the last of a read
                    sent = message.events[-1].telemetry.metrics["sent"].number
                    stats["latency"].append(time.time() * 1000 - sent)

    tasks = [asyncio.create_task(stream(channels[i % 10])) for i in range(args.count)]
    return await _window(args, stats, tasks, channels)


async def sse_streams(args: argparse.Namespace) -> dict[str, Any]:
    from bench.sse import _Reader

    stats: dict[str, Any] = {"events": 0, "latency": [], "window": False}
    request = f"GET /api/v1/stream?access_token={args.token} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    transports = [
        (await loop.create_connection(lambda: _Reader(request, stats), "127.0.0.1", args.port))[0]
        for _ in range(args.count)
    ]
    return await _window(args, stats, [], transports)


async def _window(
    args: argparse.Namespace, stats: dict[str, Any], tasks: list[Any], closing: list[Any]
) -> dict[str, Any]:
    await asyncio.sleep(START_S)  # the source starts now
    stats["window"] = True
    started = time.monotonic()
    await asyncio.sleep(args.seconds)
    elapsed = time.monotonic() - started
    await asyncio.sleep(DRAIN_S * 0.8)  # late deliveries count toward the total, not the rate window
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for thing in closing:
        result = thing.close()
        if asyncio.iscoroutine(result):
            await result
    latency = stats["latency"]
    return {"rate": stats["events"] / elapsed, "p50": _pick(latency, 0.5), "p99": _pick(latency, 0.99)}


async def queries(args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    import httpx

    from iothub.v1 import telemetry_pb2, telemetry_pb2_grpc

    start, step = args.base, POINTS // BUCKETS
    end = start + POINTS - 1  # every stored point, in 500 buckets
    metadata = (("authorization", f"Bearer {args.token}"),)
    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        query = telemetry_pb2_grpc.TelemetryServiceStub(channel).Query
        request = telemetry_pb2.QueryRequest(
            device_id="bench-q", metrics=["v"], from_ms=start, to_ms=end, step_ms=step,
            aggregation=telemetry_pb2.AGGREGATION_AVG,
        )  # fmt: skip
        for _ in range(3):  # warm-up: the first reads of the database are from disk
            await query(request, metadata=metadata, timeout=30)
        times = []
        for _ in range(QUERIES):
            began = time.perf_counter()
            answer = await query(request, metadata=metadata, timeout=30)
            times.append((time.perf_counter() - began) * 1000)
        out["grpc"] = {"p50": _pick(times, 0.5), "p99": _pick(times, 0.99), "buckets": len(answer.series[0].points)}
    headers = {"Authorization": f"Bearer {args.token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.http_port}", headers=headers, timeout=30) as http:
        params = {"metric": "v", "from": str(start), "to": str(end), "step": f"{step}ms", "agg": "avg"}
        times = []
        for _ in range(QUERIES):
            began = time.perf_counter()
            body = (await http.get("/api/v1/devices/bench-q/telemetry", params=params)).json()
            times.append((time.perf_counter() - began) * 1000)
        out["rest"] = {"p50": _pick(times, 0.5), "p99": _pick(times, 0.99), "buckets": len(body["series"]["v"])}
    return out


async def commands(args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    import httpx

    from iothub.v1 import commands_pb2, commands_pb2_grpc

    metadata = (("authorization", f"Bearer {args.token}"),)
    out: dict[str, Any] = {}

    async def measure(call: Any) -> dict[str, float]:
        times: list[float] = []
        deadline = time.monotonic() + args.seconds

        async def caller() -> None:
            while time.monotonic() < deadline:
                began = time.perf_counter()
                await call()
                times.append((time.perf_counter() - began) * 1000)

        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        return {"rate": len(times) / args.seconds, "p50": _pick(times, 0.5), "p99": _pick(times, 0.99)}

    async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        send = commands_pb2_grpc.CommandServiceStub(channel).SendCommand
        request = commands_pb2.SendCommandRequest(device_id="bench-cmd", name="ping")

        async def by_grpc() -> None:
            answer = await send(request, metadata=metadata, timeout=10)
            assert answer.ok

        out["grpc"] = await measure(by_grpc)
    headers = {"Authorization": f"Bearer {args.token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.http_port}", headers=headers, timeout=10) as http:

        async def by_rest() -> None:
            answer = await http.post("/api/v1/devices/bench-cmd/commands/ping", json={})
            assert answer.status_code == 200, answer.text

        out["rest"] = await measure(by_rest)
    return out


# -- orchestration --------------------------------------------------------------------------------


def run(scenario: str, client: str, seconds: float, rate: float = 0, clients: int = 0) -> dict[str, Any]:
    me = [sys.executable, os.path.abspath(__file__)]
    with subprocess.Popen(
        [*me, "--serve", scenario, "--rate", str(rate), "--seconds", str(seconds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as server:  # fmt: skip
        assert server.stdout is not None
        assert server.stdin is not None
        ready = server.stdout.readline().split()
        if not ready or ready[0] != "READY":
            raise SystemExit(f"the hub did not start for {scenario}")
        grpc_port, http_port, token, base = ready[1:5]
        port = http_port if client == "sse" else grpc_port
        proc = psutil.Process(server.pid)
        proc.cpu_percent()
        try:
            result = subprocess.run(
                [*me, "--clients", client, "--count", str(clients), "--port", port, "--http-port", http_port,
                 "--token", token, "--base", base, "--seconds", str(seconds)],
                capture_output=True, text=True, timeout=seconds + 300, check=False,
            )  # fmt: skip
            cpu = proc.cpu_percent()
            rss = proc.memory_info().rss / 2**20
        finally:
            server.stdin.close()
            server.wait(timeout=60)
    if result.returncode != 0:
        raise SystemExit(f"{client} clients failed:\n{result.stderr[-2000:]}")
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer | {"cpu": cpu, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--only", default="a,b,c")
    parser.add_argument("--serve", choices=("subscribe", "query", "command"), help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--clients", choices=("grpc", "sse", "query", "command"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=500.0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="-", help=argparse.SUPPRESS)
    parser.add_argument("--base", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve or args.clients:
        import uvloop

        args.scenario = args.serve
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
            if args.serve:
                loop.run(serve_hub(args))
            else:
                work = {"grpc": grpc_streams, "sse": sse_streams, "query": queries, "command": commands}
                print(json.dumps(loop.run(work[args.clients](args))))
        return

    wanted = set(args.only.split(","))
    print(f"gRPC benchmark, {os.cpu_count()} cores, {args.seconds:g} s per run")
    if "a" in wanted:
        print("\n(a) Subscribe: 100 streams x 500 events/s = 50,000 deliveries/s (latency: source to client)")
        print(f"  {'':6} {'delivered/s':>12} {'share':>8} {'p50 ms':>9} {'p99 ms':>9} {'CPU':>7} {'RSS MiB':>7}")
        for name in ("grpc", "sse"):
            r = run("subscribe", name, args.seconds, rate=500, clients=100)
            print(f"  {name:6} {r['rate']:>12,.0f} {100 * r['rate'] / 50_000:>7.1f}% {r['p50']:>9.1f} "
                  f"{r['p99']:>9.1f} {r['cpu']:>6.0f}% {r['rss']:>7.0f}", flush=True)  # fmt: skip
    if "b" in wanted:
        print(f"\n(b) Query: {POINTS:,} points of one metric into {BUCKETS} buckets (avg), {QUERIES} queries each")
        r = run("query", "query", args.seconds)
        for name in ("grpc", "rest"):
            q = r[name]
            print(f"  {name:6} p50 {q['p50']:7.1f} ms   p99 {q['p99']:7.1f} ms   ({q['buckets']} buckets)")
    if "c" in wanted:
        print(f"\n(c) SendCommand: {CALLERS} concurrent callers, a device that answers at once")
        r = run("command", "command", args.seconds)
        for name in ("grpc", "rest"):
            c = r[name]
            print(f"  {name:6} {c['rate']:>8,.0f} round trips/s   p50 {c['p50']:6.1f} ms   p99 {c['p99']:6.1f} ms")


if __name__ == "__main__":
    main()
