"""Simulator cost: how cheap 1,000 devices in one process are.

Starts a hub (its own process, free ports), then ``iothub simulate`` with N devices at a modest
rate for a bounded time, and prints the simulator's connect time, RSS, CPU and the messages the hub
stored. Everything stops by itself after ``--seconds``.

    python bench/fleet.py --devices 1000 --rate 0.2 --seconds 20
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time

import httpx
import psutil


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.2, help="messages/s per device [0.2]")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data:
        hub = subprocess.Popen(
            [sys.executable, "-m", "iothub", "run", "--data-dir", data,
             "--mqtt-port", "0", "--mqtt-ws-port", "0", "--http-port", "0", "--grpc-port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert hub.stdout is not None
            line = hub.stdout.readline()
            found = re.search(r"mqtt=(\S+) .* http=(\S+)", line)
            assert found, line
            mqtt, http = found[1], found[2]
            token = re.search(r"\(shown once\): (\S+)", hub.stdout.readline())
            assert token, "the hub printed no first-start token"
            auth = {"Authorization": f"Bearer {token[1]}"}
            sim = subprocess.Popen(
                [sys.executable, "-m", "iothub", "simulate", "--broker", f"mqtt://{mqtt}",
                 "--devices", str(args.devices), "--rate", str(args.rate),
                 "--duration", str(args.seconds), "--prefix", "fleet", "--data-dir", data],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            proc = psutil.Process(sim.pid)
            started = time.monotonic()
            connected_after = None
            peak_rss = 0
            deadline = started + args.seconds + 30
            last_cpu, last_at = None, 0.0
            while sim.poll() is None and time.monotonic() < deadline:
                try:
                    peak_rss = max(peak_rss, proc.memory_info().rss)
                    if connected_after is not None:
                        last_cpu, last_at = proc.cpu_times(), time.monotonic()
                except psutil.NoSuchProcess:
                    break
                if connected_after is None:
                    online = httpx.get(
                        f"{http}/api/v1/devices", params={"online": "true"}, headers=auth, timeout=5
                    ).json()["count"]
                    if online >= args.devices:
                        connected_after = time.monotonic() - started
                        cpu_start = proc.cpu_times()
                        steady_from = time.monotonic()
                time.sleep(0.2)
            out, _ = sim.communicate(timeout=60)
            metrics = httpx.get(f"{http}/metrics", headers=auth, timeout=5).text
            stored = re.search(r"^iothub_messages_stored_total (\S+)$", metrics, re.M)
        finally:
            hub.terminate()
            hub.wait(30)
            if hub.stdout is not None:
                hub.stdout.close()

    print(f"simulator: {args.devices} devices at {args.rate:g} msg/s each, {args.seconds:g} s")
    print(f"  all online after      {connected_after:.1f} s" if connected_after else "  not all came online")
    print(f"  peak RSS              {peak_rss / 2**20:.0f} MiB ({peak_rss / args.devices / 1024:.0f} KiB per device)")
    if connected_after is not None and last_cpu is not None and last_at - steady_from > 1:
        busy = (last_cpu.user + last_cpu.system) - (cpu_start.user + cpu_start.system)
        print(f"  CPU while steady      {100 * busy / (last_at - steady_from):.0f}% of one core")
    print(f"  {out.strip().splitlines()[-1] if out.strip() else 'no summary'}")
    print(f"  stored by the hub     {float(stored[1]) if stored else 0:,.0f} messages")


if __name__ == "__main__":
    main()
