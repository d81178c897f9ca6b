"""Connections: connect storms, idle connections and a hub restart, beside plain amqtt and Mosquitto.

Each broker runs in a process of its own on a loopback port; the clients are lean raw-socket
devices (:mod:`bench.rawmqtt`) split over ``--workers`` processes. Scenarios:

* ``idle``: ``--idle`` (5,000 by default) anonymous clients connect as fast as they can (200 at a
  time per process) and stay: connects/s, the broker's RSS per connection, and meanwhile a probe (a
  publisher and a subscriber connected before the storm, 200 QoS 1 messages/s) measures
  publish-to-delivery p50/p99/max while the storm lasts;
* ``restart`` (hub only): ``--registered`` devices registered with credentials connect, the hub is
  stopped and started again on the same port and data directory, and the devices (retrying every
  0.25-0.5 s, as a device with a short backoff would) come back: seconds from the new hub listening
  to all of them online. ``--argon2`` stores their secrets as argon2id hashes, as earlier versions
  did, to compare.

Each process's open-files soft limit is raised to the hard one; past it (the hub holds one
descriptor per connection) connections are refused, which ``--idle`` above about the hard limit
shows.

    python bench/connections.py [--only idle,restart] [--idle 5000] [--registered 5000] [--argon2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
PROBE_RATE = 200


def _raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# -- the clients (each role in a process of its own) ----------------------------------------------------


async def storm(port: int, first: int, count: int) -> dict[str, Any]:
    """Connect ``count`` idle clients when told to, report when all are in, hold them until told."""
    from bench.rawmqtt import Device, connect

    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # go
    devices: list[Device] = []
    refused = 0
    for start in range(first, first + count, 200):
        batch = range(start, min(start + 200, first + count))
        for result in await asyncio.gather(
            *(connect("127.0.0.1", port, f"idle-{n}") for n in batch), return_exceptions=True
        ):
            if isinstance(result, BaseException):
                refused += 1
            else:
                devices.append(result)
    print(json.dumps({"done_at": time.time(), "connected": len(devices), "refused": refused}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # measured
    for d in devices:
        d.close()
    return {}


async def probe(port: int) -> dict[str, Any]:
    """A publisher and a subscriber; QoS 1 at ``PROBE_RATE``/s until told to stop: delivery latency."""
    from bench.broker import Client, _payload, _string

    sub, pub = Client(), Client()
    await sub.connect(port, "probe-sub")
    await sub.subscribe(["bench/probe"], 1)
    await pub.connect(port, "probe-pub")
    sub.timed = True
    print(json.dumps({"ready": True}), flush=True)
    stop = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    topic = _string("bench/probe")
    loop = asyncio.get_running_loop()
    start, n = loop.time(), 0
    while not stop.done():
        await pub.publish(topic, _payload(timed=True), 1)
        n += 1
        await asyncio.sleep(max(0.0, start + n / PROBE_RATE - loop.time()))
    async with asyncio.timeout(10):
        while sub.received < n:  # noqa: ASYNC110 - bounded; fed by the socket
            await asyncio.sleep(0.05)
    lat = sub.latencies
    return {"sent": n, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=0)}


async def devices(port: int, credentials: str, pairs: list[list[str]], deadline_s: float) -> dict[str, Any]:
    """Registered devices that stay connected, reconnecting after a drop; report each reconnection."""
    from bench.rawmqtt import connect

    online = 0
    back: list[float] = []
    first_round = True
    rng = random.Random(credentials)
    done = asyncio.Event()

    async def one(device_id: str, secret: str) -> None:
        nonlocal online
        while True:
            try:
                device = await connect("127.0.0.1", port, device_id, device_id, secret)
            except (OSError, ConnectionError, TimeoutError):
                await asyncio.sleep(0.25 + rng.random() / 4)
                continue
            if not first_round:
                back.append(time.time())
            online += 1
            if online == len(pairs):
                done.set()
            await device.closed
            online -= 1
            if not first_round:
                return
            await asyncio.sleep(0.25 + rng.random() / 4)

    tasks = [asyncio.create_task(one(i, s)) for i, s in pairs]
    started = time.monotonic()
    async with asyncio.timeout(deadline_s):
        await done.wait()
    print(json.dumps({"connected": online, "connect_s": time.monotonic() - started}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the hub is stopping
    done.clear()
    first_round = False
    try:
        async with asyncio.timeout(deadline_s):
            while len(back) < len(pairs):  # noqa: ASYNC110 - bounded; fed by the reconnections
                await asyncio.sleep(0.05)
    except TimeoutError:
        pass
    for t in tasks:
        t.cancel()
    return {"back": len(back), "last_back_at": max(back, default=0.0)}


# -- the brokers -------------------------------------------------------------------------------------------


async def serve_hub(data_dir: str, port: int, anonymous: bool) -> None:
    from iothub.hub.settings import Settings
    from iothub.runner import Running, run

    mqtt = {"port": port, "ws_port": None, "allow_anonymous": anonymous}
    settings = Settings(data_dir=Path(data_dir), mqtt=mqtt, http={"port": 0}, grpc={"port": None}, log_level="error")

    def ready(running: Running) -> None:
        print(f"READY {running.ports['mqtt']}", flush=True)

    await run(settings, ready)


def start_broker(name: str, tmp: Path, data: str | None = None, port: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    from bench.broker import Broker

    if name != "hub":
        broker = Broker(name, tmp)
        broker.__enter__()
        assert broker.proc is not None
        return broker.proc, broker.port
    me = [sys.executable, str(Path(__file__).resolve())]
    anonymous = [] if data else ["--anonymous"]
    data = data or tempfile.mkdtemp(dir=tmp)
    proc = subprocess.Popen([*me, "--serve-hub", data, "--port", str(port), *anonymous], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    for _ in range(5):  # `iothub run` prints its addresses first
        line = proc.stdout.readline().decode().split()
        if line[:1] == ["READY"]:
            return proc, int(line[1])
    proc.kill()
    raise RuntimeError(f"the hub did not start: {line}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)


def _role(role: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--port", str(port), *extra]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)


def _line(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("a client process ended early")
    result: dict[str, Any] = json.loads(line)
    return result


def _tell(proc: subprocess.Popen[bytes], text: str = "go") -> None:
    assert proc.stdin is not None
    proc.stdin.write(f"{text}\n".encode())
    proc.stdin.flush()


def run_idle(name: str, tmp: Path, count: int, workers: int) -> dict[str, Any]:
    proc, port = start_broker(name, tmp)
    try:
        broker = psutil.Process(proc.pid)
        prober = _role("probe", port)
        _line(prober)  # ready
        share = -(-count // workers)
        storms = [_role("storm", port, "--first", str(n * share), "--count", str(min(share, count - n * share)))
                  for n in range(workers)]  # fmt: skip
        time.sleep(1.0)  # the storm processes have imported what they need
        before = broker.memory_info().rss
        started = time.time()
        for s in storms:
            _tell(s)
        reports = [_line(s) for s in storms]
        elapsed = max(r["done_at"] for r in reports) - started
        _tell(prober, "stop")
        out, _ = prober.communicate(timeout=60)
        probed = json.loads(out.decode().strip().splitlines()[-1])
        connected = sum(r["connected"] for r in reports)
        rss = broker.memory_info().rss
        for s in storms:
            _tell(s)
            s.communicate(timeout=60)
    finally:
        stop(proc)
    return {
        "connected": connected,
        "refused": sum(r["refused"] for r in reports),
        "connect_s": connected / elapsed,
        "rss_per_conn_kb": (rss - before) / max(connected, 1) / 1024,
        "probe_p50_ms": probed["p50_ms"],
        "probe_p99_ms": probed["p99_ms"],
        "probe_max_ms": probed["max_ms"],
    }


def run_restart(tmp: Path, count: int, workers: int, argon2: bool) -> dict[str, Any]:
    from iothub.hub.credentials import hash_secret_argon2
    from iothub.hub.registry import Registry

    data = tempfile.mkdtemp(dir=tmp)
    registry = Registry(Path(data) / "registry.db")
    pairs = [[f"dev-{n}", registry.add_device(f"dev-{n}")[1]] for n in range(count)]
    if argon2:  # as earlier versions stored them
        with registry._lock:  # a benchmark's shortcut: one transaction for all
            registry._db.executemany(
                "UPDATE devices SET secret_hash = ? WHERE id = ?", [(hash_secret_argon2(s), i) for i, s in pairs]
            )
    registry.close()
    share = -(-count // workers)
    files = []
    for n in range(workers):
        f = tmp / f"credentials-{n}.json"
        f.write_text(json.dumps(pairs[n * share : (n + 1) * share]))
        files.append(f)
    proc, port = start_broker("hub", tmp, data)
    clients = [_role("devices", port, "--credentials", str(f)) for f in files]
    try:
        first = [_line(c) for c in clients]
        stop(proc)
        for c in clients:
            _tell(c)
        proc, _ = start_broker("hub", tmp, data, port)
        ready_at = time.time()
        results = []
        for c in clients:
            out, _ = c.communicate(timeout=120)
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        stop(proc)
    back = sum(r["back"] for r in results)
    return {
        "registered": count,
        "first_connect_s": max(r["connect_s"] for r in first),
        "back": back,
        "all_back_after_s": max(r["last_back_at"] for r in results) - ready_at if back == count else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="idle,restart")
    parser.add_argument("--brokers", default="hub,amqtt,mosquitto", help="for idle; restart is the hub's")
    parser.add_argument("--idle", type=int, default=5000, help="idle clients [5000]")
    parser.add_argument("--registered", type=int, default=5000, help="registered devices for restart [5000]")
    parser.add_argument("--argon2", action="store_true", help="restart with argon2id hashes (earlier versions)")
    parser.add_argument("--workers", type=int, default=2, help="client processes [2]")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--credentials", help=argparse.SUPPRESS)
    parser.add_argument("--serve-hub", help=argparse.SUPPRESS)
    parser.add_argument("--anonymous", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _raise_open_files()
    from bench.rawmqtt import runner as loop_runner

    runner = loop_runner()
    if args.serve_hub:
        runner(serve_hub(args.serve_hub, args.port, args.anonymous))
        return
    if args.role:
        if args.role == "storm":
            result = runner(storm(args.port, args.first, args.count))
        elif args.role == "probe":
            result = runner(probe(args.port))
        else:
            pairs = json.loads(Path(args.credentials).read_text())
            result = runner(devices(args.port, args.credentials, pairs, 60.0))
        os.set_blocking(sys.stdout.fileno(), True)  # the event loop left it non-blocking: no partial write
        print(json.dumps(result), flush=True)
        return
    wanted = args.only.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if "idle" in wanted:
            results = {}
            for name in args.brokers.split(","):
                results[name] = run_idle(name, Path(tmp), args.idle, args.workers)
                print(f"{name:10} idle  " + "  ".join(f"{k}={v:,.1f}" for k, v in results[name].items()), flush=True)
            print(f"\n{args.idle:,} idle clients connecting ({args.workers} processes, 200 at a time each)")
            print("| figure | " + " | ".join(results) + " |")
            print("|---" * (len(results) + 1) + "|")
            for key in next(iter(results.values())):
                print(f"| {key} | " + " | ".join(f"{r[key]:,.1f}" for r in results.values()) + " |")
        if "restart" in wanted:
            r = run_restart(Path(tmp), args.registered, args.workers, args.argon2)
            kind = "argon2id" if args.argon2 else "SHA-256"
            print(f"\nhub restart with {r['registered']:,} registered devices ({kind} secret hashes):")
            print(f"  all connected at first after {r['first_connect_s']:.1f} s")
            print(
                f"  back online: {r['back']:,}, all of them {r['all_back_after_s']:.1f} s after the hub listened again"
            )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.path[0] = str(ROOT)  # the repository, for bench.rawmqtt
    main()
