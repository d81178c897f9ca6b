"""Publish one telemetry message to iothub as a registered device, with aiomqtt.

Register the device first (``iothub devices add th-1`` prints its secret), then::

    python docs/examples/publish_telemetry.py --device th-1 --secret SECRET --temperature 21.5

Host, port, device and secret also come from ``MQTT_HOST``, ``MQTT_PORT``, ``DEVICE_ID`` and
``DEVICE_SECRET``. The message goes out with QoS 1: when this script returns, the hub has stored it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import aiomqtt

# The hub's refusals (MQTT 3.1.1 CONNACK codes), keyed by the MQTT 5 reason code paho-mqtt reports them as.
REFUSED = {
    133: "refused (CONNACK 0x02): the client id must be the device id",
    134: "refused (CONNACK 0x04): unknown device or wrong secret",
    135: "refused (CONNACK 0x05): not authorised (is the device disabled?)",
}


def parse_args() -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="Publish one telemetry message as a registered device.")
    parser.add_argument("--host", default=env.get("MQTT_HOST", "127.0.0.1"), help="broker host [MQTT_HOST]")
    parser.add_argument("--port", type=int, default=env.get("MQTT_PORT", "1883"), help="MQTT port [MQTT_PORT]")
    parser.add_argument("--device", default=env.get("DEVICE_ID"), help="device id [DEVICE_ID]")
    parser.add_argument("--secret", default=env.get("DEVICE_SECRET"), help="device secret [DEVICE_SECRET]")
    parser.add_argument("--temperature", type=float, default=21.5)
    args = parser.parse_args()
    if not args.device or not args.secret:
        parser.error("a device id and secret are needed: --device/--secret or DEVICE_ID/DEVICE_SECRET")
    return args


async def publish(args: argparse.Namespace) -> None:
    # The hub lets a device in with MQTT client id = username = its id, password = its secret.
    async with aiomqtt.Client(
        args.host, args.port, identifier=args.device, username=args.device, password=args.secret, timeout=10
    ) as client:
        payload = {"ts": int(time.time() * 1000), "metrics": {"temperature": args.temperature}}
        await client.publish(f"devices/{args.device}/telemetry", json.dumps(payload), qos=1)


def main() -> int:
    args = parse_args()
    try:
        asyncio.run(publish(args))
    except aiomqtt.MqttError as exc:  # refused, unreachable, timed out
        code = exc.rc.value if isinstance(exc, aiomqtt.MqttCodeError) and hasattr(exc.rc, "value") else None
        print(f"publish_telemetry: {args.device} at {args.host}:{args.port}: {REFUSED.get(code, exc)}", file=sys.stderr)
        return 1
    print(f"published temperature={args.temperature} for {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
