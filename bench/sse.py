"""SSE benchmark: the hub's /api/v1/stream against a minimal sse-starlette broadcaster.

Three processes per run: a server (the hub, or the baseline: one asyncio.Queue per client and one
ServerSentEvent per send), an event source inside it at a fixed rate, and the clients in a process
of their own that read cheaply (they count frames and parse only the send time of the last event
of each read). For the hub, events go the whole way: ingest, store, fan-out, SSE.

Scenarios: (a) 1,000 clients at 20 events/s; (b) 100 clients at 200 events/s; (c) as (a) plus 10
clients that never read; (d) 200 clients while the rate doubles until p99 passes 100 ms or less than
95% is delivered, giving the most deliveries/s sustained. Each run is bounded by --seconds.

    python bench/sse.py [--seconds 6] [--only a,b,c,d]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

START_S = 1.5  # clients connect before the timed window starts
DRAIN_S = 1.0


# -- servers (run with --serve) -----------------------------------------------------------------


async def _source(emit: Any, rate: float, seconds: float) -> None:
    """Call ``emit(seq, sent_ms)`` ``rate`` times a second for ``seconds``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    seq = 0
    while (now := loop.time()) - start < seconds:
        due = int((now - start) * rate)
        while seq < due:
            emit(seq, time.time() * 1000)
            seq += 1
        await asyncio.sleep(min(0.005, 1 / rate))


async def serve_hub(args: argparse.Namespace) -> None:
    from iothub.hub.settings import load_settings
    from iothub.runner import serve, tune_gc

    with tempfile.TemporaryDirectory() as data:
        settings = load_settings(
            None,
            data_dir=Path(data),
            mqtt={"port": 0, "ws_port": None},
            http={"port": 0},
            grpc={"port": None},
            log_level="warning",
        )
        async with serve(settings) as running:
            tune_gc()  # as `iothub run` does
            print(f"READY {running.ports['http']} {running.hub.first_token}", flush=True)
            await asyncio.sleep(START_S)
            ingest = running.hub.ingest

            def emit(seq: int, sent: float) -> None:
                payload = json.dumps({"seq": seq, "metrics": {"sent": sent, "value": seq % 100}}).encode()
                ingest.on_publish("bench-src", "devices/bench-src/telemetry", payload)

            await _source(emit, args.rate, args.seconds)
            await asyncio.sleep(DRAIN_S)


async def serve_baseline(args: argparse.Namespace) -> None:
    import uvicorn
    from sse_starlette import EventSourceResponse, ServerSentEvent
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    queues: set[asyncio.Queue[dict[str, Any]]] = set()

    async def stream(request: Request) -> EventSourceResponse:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        queues.add(queue)

        async def events() -> Any:
            try:
                while True:
                    item = await queue.get()
                    yield ServerSentEvent(data=item["data"], event="telemetry", id=item["id"])
            finally:
                queues.discard(queue)

        return EventSourceResponse(events())

    app = Starlette(routes=[Route("/api/v1/stream", stream)])
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    print(f"READY {sock.getsockname()[1]} -", flush=True)
    await asyncio.sleep(START_S)

    def emit(seq: int, sent: float) -> None:
        data = json.dumps({"id": seq, "type": "telemetry", "device_id": "bench-src",
                           "metrics": {"sent": sent, "value": seq % 100}})  # fmt: skip
        for queue in queues:
            queue.put_nowait({"id": str(seq), "data": data})

    await _source(emit, args.rate, args.seconds)
    await asyncio.sleep(DRAIN_S)
    server.should_exit = True
    await task


# -- clients (run with --clients) -----------------------------------------------------------------

SENT = b'"sent":'


class _Reader(asyncio.Protocol):
    """One SSE client as a protocol: a callback per read, no task wake-up per event."""

    def __init__(self, request: bytes, stats: dict[str, Any]) -> None:
        self.request = request
        self.stats = stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]  # a stream transport (uvloop's too)

    def data_received(self, chunk: bytes) -> None:
        stats = self.stats
        if not stats["window"]:
            return
        stats["events"] += chunk.count(b"event: telemetry")
        at = chunk.rfind(SENT)
        if at >= 0:
            end = at + len(SENT)
            stop_at = min(i for i in (chunk.find(b",", end), chunk.find(b"}", end)) if i >= 0)
            stats["latency"].append(time.time() * 1000 - float(chunk[end:stop_at]))


async def _stuck(port: int, token: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    query = f"?access_token={token}" if token != "-" else ""
    sock.send(f"GET /api/v1/stream{query} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    return sock  # ... and never read


async def run_clients(args: argparse.Namespace) -> dict[str, Any]:
    stats: dict[str, Any] = {"events": 0, "latency": [], "window": False}
    stop = asyncio.Event()
    stuck = [await _stuck(args.port, args.token) for _ in range(args.stuck)]
    loop = asyncio.get_running_loop()
    query = f"?access_token={args.token}" if args.token != "-" else ""
    request = f"GET /api/v1/stream{query} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    readers = []
    for _ in range(args.clients):
        transport, _ = await loop.create_connection(lambda: _Reader(request, stats), "127.0.0.1", args.port)
        readers.append(transport)
    await asyncio.sleep(START_S)  # the source starts now
    stats["window"] = True
    started = time.monotonic()
    await asyncio.sleep(args.seconds)
    elapsed = time.monotonic() - started
    await asyncio.sleep(args.tail)  # late deliveries count toward the total, not the rate window
    stop.set()
    for transport in readers:
        transport.close()
    for sock in stuck:
        sock.close()
    latency = sorted(stats["latency"])

    def pick(q: float) -> float:
        return float(latency[min(len(latency) - 1, int(q * len(latency)))]) if latency else float("nan")

    return {"delivered": stats["events"], "rate": stats["events"] / elapsed, "p50": pick(0.5), "p99": pick(0.99)}


# -- orchestration --------------------------------------------------------------------------------


def run(target: str, clients: int, rate: float, stuck: int, seconds: float) -> dict[str, Any]:
    me = [sys.executable, os.path.abspath(__file__)]
    with subprocess.Popen(
        [*me, "--serve", target, "--rate", str(rate), "--seconds", str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as server:  # fmt: skip
        assert server.stdout is not None
        ready = server.stdout.readline().split()
        if not ready or ready[0] != "READY":
            raise SystemExit(f"{target} did not start")
        port, token = ready[1], ready[2]
        proc = psutil.Process(server.pid)
        proc.cpu_percent()
        client = subprocess.run(
            [*me, "--clients", str(clients), "--stuck", str(stuck), "--port", port, "--token", token,
             "--seconds", str(seconds)],
            capture_output=True, text=True, timeout=seconds + 60, check=False,
        )  # fmt: skip
        cpu = proc.cpu_percent()
        rss = proc.memory_info().rss / 2**20
        server.wait(timeout=30)
    if client.returncode != 0:
        raise SystemExit(f"clients failed against {target}:\n{client.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(client.stdout.strip().splitlines()[-1])
    result |= {"expected": clients * rate, "cpu": cpu, "rss": rss}
    return result


def row(name: str, r: dict[str, Any]) -> str:
    share = 100 * r["rate"] / r["expected"] if r["expected"] else 0
    return (f"  {name:9} {r['rate']:>12,.0f} {share:>7.1f}% {r['p50']:>9.1f} {r['p99']:>9.1f}"
            f" {r['cpu']:>6.0f}% {r['rss']:>7.0f}")  # fmt: skip


def scenario(title: str, clients: int, rate: float, stuck: int, seconds: float) -> tuple[dict[str, Any], ...]:
    print(f"\n{title}: {clients} clients x {rate:g} events/s = {clients * rate:,.0f} deliveries/s"
          + (f", plus {stuck} clients that never read" if stuck else ""))  # fmt: skip
    print(f"  {'':9} {'delivered/s':>12} {'share':>8} {'p50 ms':>9} {'p99 ms':>9} {'CPU':>7} {'RSS MiB':>7}")
    hub = run("hub", clients, rate, stuck, seconds)
    print(row("hub", hub), flush=True)
    base = run("baseline", clients, rate, stuck, seconds)
    print(row("baseline", base), flush=True)
    print(f"  hub/baseline: delivered x{hub['rate'] / max(base['rate'], 1e-9):.2f}, "
          f"p99 x{hub['p99'] / base['p99']:.2f}")  # fmt: skip
    return hub, base


def saturation(target: str, clients: int, seconds: float) -> float:
    best = 0.0
    rate = 25.0
    while rate <= 3200:
        r = run(target, clients, rate, 0, seconds)
        ok = r["p99"] <= 100 and r["rate"] >= 0.95 * r["expected"]
        print(f"  {target:9} {rate:>6g} events/s: {r['rate']:>10,.0f} delivered/s, p99 {r['p99']:>8.1f} ms"
              f"{'' if ok else '  <- past the limit'}", flush=True)  # fmt: skip
        if not ok:
            break
        best = max(best, r["rate"])
        rate *= 2
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--only", default="a,b,c,d")
    parser.add_argument("--serve", choices=("hub", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stuck", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=20.0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="-", help=argparse.SUPPRESS)
    parser.add_argument("--tail", type=float, default=DRAIN_S * 0.8, help=argparse.SUPPRESS)  # 0: source runs on
    args = parser.parse_args()

    if args.serve or args.clients is not None:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
            if args.serve == "hub":
                loop.run(serve_hub(args))
            elif args.serve == "baseline":
                loop.run(serve_baseline(args))
            else:
                print(json.dumps(loop.run(run_clients(args))))
        return

    wanted = set(args.only.split(","))
    print(f"SSE benchmark, {os.cpu_count()} cores, {args.seconds:g} s per run (latency: source to client)")
    if "a" in wanted:
        scenario("(a)", 1000, 20, 0, args.seconds)
    if "b" in wanted:
        scenario("(b)", 100, 200, 0, args.seconds)
    if "c" in wanted:
        scenario("(c)", 1000, 20, 10, args.seconds)
    if "d" in wanted:
        print("\n(d) saturation, 200 clients, rate doubling until p99 > 100 ms or < 95% delivered")
        hub = saturation("hub", 200, args.seconds)
        base = saturation("baseline", 200, args.seconds)
        print(f"  most sustained: hub {hub:,.0f}/s, baseline {base:,.0f}/s, x{hub / max(base, 1e-9):.1f}")


if __name__ == "__main__":
    main()
