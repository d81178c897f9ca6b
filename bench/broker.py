"""Broker benchmark: one load generator against the hub's broker, plain amqtt 0.12.1 and Mosquitto.

Each broker runs in a process of its own on a free loopback port; the load runs in another process
(raw MQTT 3.1.1 over asyncio, uvloop when installed, 100-byte payloads). Scenarios, each bounded by
``--seconds``:

* ``qos0`` / ``qos1`` / ``qos2``: 1 publisher -> 1 subscriber (window of 20 unacknowledged messages);
* ``fan_in``: 200 publishers -> 1 subscriber, QoS 1;
* ``fan_out``: 1 publisher -> 100 subscribers, QoS 1 (deliveries/s);
* ``unrelated``: ``qos1`` with 10,000 subscriptions no message matches (cost vs ``qos1``);
* ``latency``: QoS 1 paced at 1,000 msg/s, p50/p99 publish-to-receive;
* ``idle``: 5,000 idle connections: connect rate and broker RSS per connection;
* hub only, ``durable`` vs ``not_durable``: device telemetry QoS 1 from 50 devices (stored by the
  hub) with ``mqtt.durable_ack`` on and off: messages acknowledged per second.

Flows report ``msg_s`` (received by the subscribers, which run in a process of their own) and
``acked_s`` (acknowledgements the publishers got).

    python bench/broker.py [--seconds 5] [--brokers hub,amqtt,mosquitto] [--only qos1,idle]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = 100
WINDOW = 20
SCENARIOS = ["qos0", "qos1", "qos2", "fan_in", "fan_out", "unrelated", "latency", "idle"]
_U16 = struct.Struct("!H")
_TS = struct.Struct("!Q")


# -- a minimal MQTT 3.1.1 client ---------------------------------------------------------------------


def _string(text: str) -> bytes:
    data = text.encode()
    return _U16.pack(len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


class Client:
    """Publishes with a window of unacknowledged messages; counts and acknowledges what it receives."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.inflight = 0
        self.received = 0
        self.acked = 0
        self.latencies: list[float] = []
        self.timed = False
        self._room = asyncio.Event()
        self._next_id = 0
        self._suback = asyncio.Event()
        self._connack: asyncio.Future[int] | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, port: int, client_id: str, keepalive: int = 600) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        variable = _string("MQTT") + bytes([4, 0x02]) + _U16.pack(keepalive)
        self._connack = asyncio.get_running_loop().create_future()
        self.writer.write(_packet(0x10, variable + _string(client_id)))
        self._task = asyncio.create_task(self._read())
        code = await self._connack
        if code:
            raise RuntimeError(f"CONNACK {code} for {client_id}")

    async def subscribe(self, filters: list[str], qos: int) -> None:
        for start in range(0, len(filters), 500):
            self._suback.clear()
            body = _U16.pack(1) + b"".join(_string(f) + bytes([qos]) for f in filters[start : start + 500])
            self.writer.write(_packet(0x82, body))
            await self._suback.wait()

    async def publish(self, topic: bytes, payload: bytes, qos: int) -> None:
        if qos == 0:
            self.writer.write(_packet(0x30, topic + payload))
            if self.writer.transport.get_write_buffer_size() > 64 * 1024:
                await self.writer.drain()
            return
        while self.inflight >= self.window:
            self._room.clear()
            await self._room.wait()
        self._next_id = self._next_id % 65535 + 1
        self.inflight += 1
        self.writer.write(_packet(0x30 | qos << 1, topic + _U16.pack(self._next_id) + payload))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.writer.close()

    async def _read(self) -> None:
        buf = bytearray()
        reader, write = self.reader, self.writer.write
        while True:
            data = await reader.read(65536)
            if not data:
                return
            buf += data
            at = 0
            while len(buf) - at >= 2:
                length, shift, i = 0, 0, at + 1
                while i < len(buf):
                    byte = buf[i]
                    i += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                else:
                    break
                if i + length > len(buf):
                    break
                self._handle(buf[at] >> 4, buf[at] & 0x0F, bytes(buf[i : i + length]), write)
                at = i + length
            del buf[:at]

    def _handle(self, kind: int, flags: int, body: bytes, write: Callable[[bytes], None]) -> None:
        if kind == 3:
            self.received += 1
            qos = (flags >> 1) & 3
            n = _U16.unpack_from(body)[0]
            at = 2 + n
            if qos:
                packet_id = body[at : at + 2]
                at += 2
                write(bytes([0x40 if qos == 1 else 0x50, 2]) + packet_id)
            if self.timed:
                self.latencies.append((time.monotonic_ns() - _TS.unpack_from(body, at)[0]) / 1e6)
        elif kind in (4, 7):  # PUBACK, PUBCOMP
            self.inflight -= 1
            self.acked += 1
            self._room.set()
        elif kind == 5:  # PUBREC -> PUBREL
            write(bytes([0x62, 2]) + body)
        elif kind == 6:  # PUBREL -> PUBCOMP
            write(bytes([0x70, 2]) + body)
        elif kind == 9:
            self._suback.set()
        elif kind == 2 and self._connack is not None and not self._connack.done():
            self._connack.set_result(body[1])


# -- the load (runs in its own process) --------------------------------------------------------------


def _payload(timed: bool = False) -> bytes:
    return _TS.pack(time.monotonic_ns()) + b"x" * (PAYLOAD - 8) if timed else b"x" * PAYLOAD


async def _connected(port: int, prefix: str, n: int) -> list[Client]:
    clients = [Client() for _ in range(n)]
    for start in range(0, n, 100):
        await asyncio.gather(
            *(c.connect(port, f"{prefix}{start + i}") for i, c in enumerate(clients[start : start + 100]))
        )
    return clients


FLOWS: dict[str, dict[str, Any]] = {
    "qos0": {"qos": 0},
    "qos1": {"qos": 1},
    "qos2": {"qos": 2},
    "fan_in": {"qos": 1, "publishers": 200},
    "fan_out": {"qos": 1, "subscribers": 100},
    "unrelated": {"qos": 1, "unrelated": 10_000},
    "telemetry": {"qos": 1, "publishers": 50, "topic": "devices/bench-{n}/telemetry", "filter": "devices/+/telemetry"},
}


async def _subscribers(port: int, flow: dict[str, Any]) -> dict[str, Any]:
    """The receiving side, in a process of its own so the publishers cannot starve its acks."""
    subs = await _connected(port, "sub", flow.get("subscribers", 1))
    for sub in subs:
        await sub.subscribe([flow.get("filter", "bench/flow")], flow["qos"])
    holders = await _connected(port, "holder", 10) if flow.get("unrelated") else []
    for n, holder in enumerate(holders):
        await holder.subscribe([f"other/{n}/{k}/+" for k in range(flow["unrelated"] // 10)], 1)
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the publishers are done
    received = sum(s.received for s in subs)
    for c in [*subs, *holders]:
        await c.close()
    return {"received": received}


async def _publishers(port: int, flow: dict[str, Any], seconds: float) -> dict[str, Any]:
    pubs = await _connected(port, "pub", flow.get("publishers", 1))
    topic = flow.get("topic", "bench/flow")
    qos = flow["qos"]
    deadline = time.monotonic() + seconds

    async def publish(n: int, pub: Client) -> None:
        encoded = _string(topic.format(n=n))
        seq = [0]
        payload: Callable[[], bytes] = (lambda: _telemetry(seq)) if "{n}" in topic else _payload
        while time.monotonic() < deadline:
            for _ in range(20):
                await pub.publish(encoded, payload(), qos)
            await asyncio.sleep(0)

    started = time.monotonic()
    await asyncio.gather(*(publish(n, p) for n, p in enumerate(pubs)))
    elapsed = time.monotonic() - started
    acked = sum(p.acked for p in pubs)
    for c in pubs:
        await c.close()
    return {"elapsed": elapsed, "acked": acked}


async def _latency(port: int, seconds: float) -> dict[str, Any]:
    sub, pub = Client(), Client()
    await sub.connect(port, "lat-sub")
    await sub.subscribe(["bench/latency"], 1)
    await pub.connect(port, "lat-pub")
    sub.timed = True
    topic = _string("bench/latency")
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(int(seconds * 1000)):
        delay = start + n / 1000 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await pub.publish(topic, _payload(timed=True), 1)
    async with asyncio.timeout(10):
        while sub.received < int(seconds * 1000) * 0.99:  # noqa: ASYNC110 - bounded; fed by the socket
            await asyncio.sleep(0.05)
    lat = sorted(sub.latencies)
    await sub.close()
    await pub.close()
    return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)], "received": len(lat)}


async def _idle(port: int, count: int) -> dict[str, Any]:
    started = time.monotonic()
    clients = await _connected(port, "idle", count)
    rate = count / (time.monotonic() - started)
    print(json.dumps({"connected": count}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # RSS measured
    for c in clients:
        await c.close()
    return {"connect_s": rate}


def _telemetry(seq: list[int]) -> bytes:
    seq[0] += 1
    return json.dumps({"seq": seq[0], "metrics": {"t": 21.5, "pad": "x" * 40}}).encode()


async def loadgen(role: str, port: int, seconds: float) -> dict[str, Any]:
    kind, _, scenario = role.partition(":")
    if kind == "sub":
        return await _subscribers(port, FLOWS[scenario])
    if kind == "pub":
        return await _publishers(port, FLOWS[scenario], seconds)
    if kind == "latency":
        return await _latency(port, seconds)
    return await _idle(port, 5000)


# -- the brokers (each in its own process) ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve_hub(data_dir: str, durable: bool) -> None:
    from iothub.hub.settings import Settings
    from iothub.runner import serve, tune_gc

    mqtt: dict[str, Any] = {"port": 0, "ws_port": None, "allow_anonymous": True, "durable_ack": durable}
    mqtt.update(json.loads(os.environ.get("BENCH_HUB_MQTT", "{}")))
    settings = Settings(data_dir=Path(data_dir), mqtt=mqtt, http={"port": 0}, log_level="warning")
    tune_gc()
    async with serve(settings) as running:
        print(f"READY {running.ports['mqtt']}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    registry = running.hub.metrics.registry
    stored = registry.get_sample_value("iothub_messages_stored_total") or 0
    refused = registry.get_sample_value("iothub_messages_rejected_total", {"reason": "queue_full"}) or 0
    print(json.dumps({"stored": stored, "refused": refused}), flush=True)


async def serve_amqtt() -> None:
    from amqtt.broker import Broker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        broker = Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}})
        await broker.start()
    print(f"READY {broker._servers['default'].instance.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


class Broker:
    def __init__(self, name: str, tmp: Path, durable: bool = True) -> None:
        self.name, self.tmp, self.durable = name, tmp, durable
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> Broker:
        me = [sys.executable, str(Path(__file__).resolve())]
        if self.name == "mosquitto":
            self.port = _free_port()
            conf = self.tmp / "mosquitto.conf"
            conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
            log = self.tmp / "mosquitto.log"
            with log.open("wb") as err:
                self.proc = subprocess.Popen([_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err)
            for _ in range(200):  # bounded: 10 s
                if " running" in log.read_text():
                    break
                time.sleep(0.05)
            return self
        if self.name == "hub":
            data = tempfile.mkdtemp(dir=self.tmp)
            cmd = [*me, "--serve-hub", data, *([] if self.durable else ["--not-durable"])]
        else:
            cmd = [*me, "--serve-amqtt"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if line[:1] != ["READY"]:
            raise RuntimeError(f"{self.name} did not start: {line}")
        self.port = int(line[1])
        return self

    def rss(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> str:
        """Stop the broker; what it printed on the way out."""
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


def _mosquitto() -> str:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        raise SystemExit("mosquitto is missing (apt-get install mosquitto)")
    return found


def _loadgen(broker: Broker, role: str, seconds: float) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--loadgen", role, "--port", str(broker.port)]
    return subprocess.Popen([*cmd, "--seconds", str(seconds)], stdout=subprocess.PIPE, stdin=subprocess.PIPE, cwd=ROOT)


def _last_json(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def run_scenario(broker: Broker, scenario: str, seconds: float) -> dict[str, Any]:
    if scenario in FLOWS:
        sub = _loadgen(broker, f"sub:{scenario}", seconds)
        assert sub.stdout is not None
        assert sub.stdin is not None
        if not json.loads(sub.stdout.readline()).get("ready"):
            raise RuntimeError(f"{broker.name}: subscribers for {scenario} did not get ready")
        published = _last_json(_loadgen(broker, f"pub:{scenario}", seconds), seconds * 3 + 120)
        sub.stdin.write(b"done\n")
        sub.stdin.flush()
        elapsed = published["elapsed"]
        received = _last_json(sub, 60)["received"]
        return {"msg_s": received / elapsed, "acked_s": published["acked"] / elapsed}
    before = broker.rss()
    proc = _loadgen(broker, scenario, seconds)
    assert proc.stdout is not None
    assert proc.stdin is not None
    extra: dict[str, Any] = {}
    if scenario == "idle":  # the broker's RSS with all 5,000 connected, less its RSS before
        if json.loads(proc.stdout.readline()).get("connected"):
            extra["rss_per_conn_kb"] = (broker.rss() - before) / 5000 / 1024
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    return {**_last_json(proc, seconds * 3 + 120), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--brokers", default="hub,amqtt,mosquitto")
    parser.add_argument("--only", default=",".join([*SCENARIOS, "durable"]))
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-hub", help=argparse.SUPPRESS)
    parser.add_argument("--not-durable", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-amqtt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    runner = _runner()
    if args.serve_hub:
        runner(serve_hub(args.serve_hub, not args.not_durable))
        return
    if args.serve_amqtt:
        runner(serve_amqtt())
        return
    if args.loadgen:
        print(json.dumps(runner(loadgen(args.loadgen, args.port, args.seconds))), flush=True)
        return
    wanted = args.only.split(",")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.brokers.split(","):
            results[name] = {}
            for scenario in [s for s in SCENARIOS if s in wanted]:
                with Broker(name, Path(tmp)) as broker:  # a fresh broker per scenario
                    results[name][scenario] = run_scenario(broker, scenario, args.seconds)
                print(f"{name:10} {scenario:10} {_fmt(results[name][scenario])}", flush=True)
        if "hub" in results and "durable" in wanted:
            for durable in (True, False):
                with Broker("hub", Path(tmp), durable=durable) as broker:
                    key = "durable" if durable else "not_durable"
                    results["hub"][key] = run_scenario(broker, "telemetry", args.seconds)
                    store = json.loads(broker.stop().strip().splitlines()[-1])
                    results["hub"][key]["stored_s"] = store["stored"] / args.seconds
                    results["hub"][key]["refused"] = store["refused"]
                    print(f"{'hub':10} {key:10} {_fmt(results['hub'][key])}", flush=True)
    _report(results)


def _fmt(figures: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())


def _report(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    print("\n| figure | " + " | ".join(results) + " | hub / amqtt | hub / mosquitto |")
    print("|---" * (len(results) + 3) + "|")
    rows = [(s, "msg_s") for s in ["qos0", "qos1", "qos2", "fan_in", "fan_out", "unrelated"]]
    rows += [("latency", "p50_ms"), ("latency", "p99_ms"), ("idle", "connect_s"), ("idle", "rss_per_conn_kb")]
    for scenario, key in rows:
        values = [results[b].get(scenario, {}).get(key) for b in results]
        if all(v is None for v in values):
            continue
        cells = [f"{v:,.1f}" if v is not None else "-" for v in values]
        hub = results.get("hub", {}).get(scenario, {}).get(key)
        ratios = []
        for other in ("amqtt", "mosquitto"):
            base = results.get(other, {}).get(scenario, {}).get(key)
            ratios.append(f"x{hub / base:.2f}" if hub and base else "-")
        print(f"| {scenario} {key} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    hub = results.get("hub", {})
    if "qos1" in hub and "unrelated" in hub:
        cost = 100 * (1 - hub["unrelated"]["msg_s"] / hub["qos1"]["msg_s"])
        print(f"\nhub: 10,000 unrelated subscriptions cost {cost:.1f}%")
    if "durable" in hub and "not_durable" in hub:
        on, off = hub["durable"]["acked_s"], hub["not_durable"]["acked_s"]
        print(
            f"hub: telemetry QoS 1 from 50 devices, acknowledged {on:,.0f} msg/s with durable ack vs {off:,.0f}"
            f" without ({100 * (1 - on / off):.1f}% fewer acks); stored {hub['durable']['stored_s']:,.0f} vs"
            f" {hub['not_durable']['stored_s']:,.0f} msg/s, refused as queue_full {hub['durable']['refused']:,.0f}"
            f" vs {hub['not_durable']['refused']:,.0f}"
        )


def _runner() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.path.insert(0, str(ROOT))
    main()
