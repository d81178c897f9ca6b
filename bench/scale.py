"""A fleet at scale: N devices at R messages/s each against the hub (durable ack) and Mosquitto.

Each broker runs in a process of its own on a free loopback port. The load is a lean raw-socket fleet
(:mod:`bench.rawmqtt`: one asyncio Protocol per device, uvloop when installed) split over
``--workers`` processes, each device publishing the simulator's JSON telemetry (``ts``, ``seq``, four
metrics) at QoS 1 on its own topic, spread evenly over each second. After all devices are connected
and ``--warmup`` seconds have passed, a window of ``--seconds`` is measured:

* msg/s acknowledged in the window; with durable ack a PUBACK leaves only once the message is
  committed, so publish-to-PUBACK (p50/p99, as seen by the device) bounds publish-to-stored;
* the broker's CPU (% of one core) and RSS, and the load generator's CPU (all its processes);
* for the hub, the messages stored in all (every one sent must be stored).

    python bench/scale.py --devices 10000 --rate 1 --seconds 20 [--brokers hub,mosquitto] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# -- the load: one worker process holds a slice of the fleet -----------------------------------------


def _telemetry(rng: random.Random, seq: int) -> bytes:
    t = round(rng.uniform(19, 25), 2)
    metrics = {"temperature": t, "humidity": round(rng.uniform(35, 55), 1), "setpoint": 21.0, "heating": t < 20.5}
    return json.dumps({"ts": time.time_ns() // 1_000_000, "seq": seq, "metrics": metrics}).encode()


async def worker(port: int, first: int, count: int, rate: float, warmup: float, seconds: float) -> dict[str, Any]:
    from bench.rawmqtt import Device, connect

    rng = random.Random(first)
    devices: list[Device] = []
    started = time.monotonic()
    for start in range(first, first + count, 200):
        batch = range(start, min(start + 200, first + count))
        devices += await asyncio.gather(*(connect("127.0.0.1", port, f"scale-{n}") for n in batch))
    print(json.dumps({"connected": count, "connect_s": time.monotonic() - started}), flush=True)
    go = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    window_start = float(go)  # time.time() at which the measured window opens (after the warm-up)
    window_end = window_start + seconds
    interval = 1 / rate
    tick = 0.01
    slots: list[list[Device]] = [[] for _ in range(max(1, round(interval / tick)))]
    for n, device in enumerate(devices):
        slots[n % len(slots)].append(device)
    sent_in_window = acked_before = 0
    timing = False
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    k = 0
    while time.time() < window_end:
        if not timing and time.time() >= window_start:
            timing = True
            for d in devices:
                d.timing = True
            acked_before = sum(d.acked for d in devices)
        for device in slots[k % len(slots)]:
            device.publish(_telemetry(rng, device.seq))
            device.seq += 1
            if timing:
                sent_in_window += 1
        k += 1
        next_at += tick
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    acked_in_window = sum(d.acked for d in devices) - acked_before
    for d in devices:
        d.timing = False
    sent = sum(d.sent for d in devices)
    async with asyncio.timeout(30):  # the rest of the acknowledgements, bounded
        while sum(d.acked for d in devices) < sent:  # noqa: ASYNC110 - fed by the sockets, bounded
            await asyncio.sleep(0.05)
    latencies = [x for d in devices for x in d.latencies]
    for d in devices:
        d.close()
    return {"sent": sent, "sent_window": sent_in_window, "acked_window": acked_in_window, "latencies": latencies}


# -- the brokers ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve_hub(data_dir: str, durable: bool) -> None:
    from iothub.hub.settings import Settings
    from iothub.runner import Running, run

    mqtt = {"port": 0, "ws_port": None, "allow_anonymous": True, "durable_ack": durable}
    settings = Settings(data_dir=Path(data_dir), mqtt=mqtt, http={"port": 0}, grpc={"port": None}, log_level="warning")
    found: list[Running] = []

    def ready(running: Running) -> None:
        found.append(running)
        print(f"READY {running.ports['mqtt']}", flush=True)

    await run(settings, ready)
    registry = found[0].hub.metrics.registry
    value = registry.get_sample_value
    batches = value("iothub_store_batch_seconds_count") or 1
    figures = {
        "stored": value("iothub_messages_stored_total") or 0,
        "batch_msgs": (value("iothub_store_batch_messages_sum") or 0) / batches,
        "batch_ms": 1000 * (value("iothub_store_batch_seconds_sum") or 0) / batches,
        "batches_over_50ms": batches - (value("iothub_store_batch_seconds_bucket", {"le": "0.05"}) or 0),
    }
    print(json.dumps(figures), flush=True)


class Broker:
    def __init__(self, name: str, tmp: Path, durable: bool) -> None:
        self.name, self.tmp, self.durable = name, tmp, durable
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> Broker:
        if self.name == "mosquitto":
            self.port = _free_port()
            conf = self.tmp / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000\n"
            )
            log = self.tmp / "mosquitto.log"
            mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            with log.open("wb") as err:
                self.proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err)
            for _ in range(200):  # bounded: 10 s
                if " running" in log.read_text():
                    break
                time.sleep(0.05)
            return self
        data = tempfile.mkdtemp(dir=self.tmp)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-hub", data]
        self.proc = subprocess.Popen(
            [*cmd, *([] if self.durable else ["--not-durable"])], stdout=subprocess.PIPE, cwd=ROOT
        )
        assert self.proc.stdout is not None
        for _ in range(5):  # `iothub run` prints its addresses first
            line = self.proc.stdout.readline().decode().split()
            if line[:1] == ["READY"]:
                self.port = int(line[1])
                return self
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {line}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> str:
        if self.proc is None:
            return ""
        proc, self.proc = self.proc, None
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=5)
        return (out or b"").decode()


def _cpu(procs: list[psutil.Process], system_only: bool = False) -> float:
    total = 0.0
    for p in procs:
        t = p.cpu_times()
        total += t.system if system_only else t.user + t.system
    return total


def run_fleet(broker: Broker, args: argparse.Namespace) -> dict[str, Any]:
    assert broker.proc is not None
    me = [sys.executable, str(Path(__file__).resolve())]
    share = -(-args.devices // args.workers)
    workers = []
    reports: list[Path] = []  # each worker's results, in a file (a pipe lost the tail of large ones)
    for n in range(args.workers):
        first, count = n * share, min(share, args.devices - n * share)
        report = Path(tempfile.mkstemp(prefix="scale-worker-", suffix=".json")[1])
        reports.append(report)
        cmd = [*me, "--worker", f"{broker.port},{first},{count},{args.rate},{args.warmup},{args.seconds},{report}"]
        workers.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT))
    started = time.monotonic()
    for w in workers:
        assert w.stdout is not None
        line = w.stdout.readline()
        if not line:
            raise RuntimeError(f"{broker.name}: a load worker could not connect its devices")
    connect_s = time.monotonic() - started
    window_start = time.time() + args.warmup
    for w in workers:
        assert w.stdin is not None
        w.stdin.write(f"{window_start}\n".encode())
        w.stdin.flush()
    hub = psutil.Process(broker.proc.pid)
    loadgen = [psutil.Process(w.pid) for w in workers]
    time.sleep(max(0.0, window_start - time.time()))
    cpu0, sys0, load0, t0 = _cpu([hub]), _cpu([hub], True), _cpu(loadgen), time.monotonic()
    time.sleep(args.seconds)
    cpu1, sys1, load1, t1 = _cpu([hub]), _cpu([hub], True), _cpu(loadgen), time.monotonic()
    rss = hub.memory_info().rss
    results = []
    for w, report in zip(workers, reports, strict=True):
        w.communicate(timeout=120)
        results.append(json.loads(report.read_text()))
        report.unlink()
    latencies = [x for r in results for x in r["latencies"]]
    elapsed = t1 - t0
    return {
        "connect_s": connect_s,
        "acked_s": sum(r["acked_window"] for r in results) / args.seconds,
        "sent_s": sum(r["sent_window"] for r in results) / args.seconds,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "cpu_pct": 100 * (cpu1 - cpu0) / elapsed,
        "cpu_system_pct": 100 * (sys1 - sys0) / elapsed,
        "us_per_msg": 1e6 * (cpu1 - cpu0) / max(1, sum(r["acked_window"] for r in results)),
        "rss_mib": rss / 2**20,
        "loadgen_cpu_pct": 100 * (load1 - load0) / elapsed,
        "sent": sum(r["sent"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per device [1]")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window [20]")
    parser.add_argument("--warmup", type=float, default=10.0, help="after all are connected [10]")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes [2]")
    parser.add_argument("--brokers", default="hub,mosquitto")
    parser.add_argument("--not-durable", action="store_true", help="the hub with mqtt.durable_ack off")
    parser.add_argument("--serve-hub", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from bench.rawmqtt import runner as loop_runner

    runner = loop_runner()
    if args.serve_hub:
        runner(serve_hub(args.serve_hub, not args.not_durable))
        return
    if args.worker:
        port, first, count, rate, warmup, seconds, report = args.worker.split(",")
        result = runner(worker(int(port), int(first), int(count), float(rate), float(warmup), float(seconds)))
        Path(report).write_text(json.dumps(result))
        return
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.brokers.split(","):
            with Broker(name, Path(tmp), durable=not args.not_durable) as broker:
                results[name] = run_fleet(broker, args)
                out = broker.stop()
            if name == "hub":
                results[name].update(json.loads(out.strip().splitlines()[-1]))
            print(f"{name:10} " + "  ".join(f"{k}={v:,.1f}" for k, v in results[name].items()), flush=True)
    durable = "off" if args.not_durable else "on"
    window = f"{args.seconds:g} s window"
    print(f"\n{args.devices:,} devices at {args.rate:g} msg/s, QoS 1, hub durable ack {durable}, {window}")
    print("| figure | " + " | ".join(results) + " |")
    print("|---" * (len(results) + 1) + "|")
    rows = [("acked_s", "msg/s acknowledged"), ("p50_ms", "p50 publish-to-PUBACK ms"),
            ("p99_ms", "p99 publish-to-PUBACK ms"), ("cpu_pct", "broker CPU % of a core"),
            ("cpu_system_pct", "of which in the kernel"),
            ("us_per_msg", "broker CPU us per message"), ("rss_mib", "broker RSS MiB"),
            ("loadgen_cpu_pct", "load generator CPU %"), ("connect_s", "all connected after s")]  # fmt: skip
    for key, label in rows:
        print(f"| {label} | " + " | ".join(f"{r[key]:,.1f}" for r in results.values()) + " |")
    if "hub" in results:
        hub = results["hub"]
        print(f"hub stored {hub['stored']:,.0f} of {hub['sent']:,} sent")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.path[0] = str(ROOT)  # the repository, for bench.rawmqtt
    main()
