"""An app on iothub's WebSocket: follow one device's telemetry live and send it a command.

    python docs/examples/ws_app.py --url ws://127.0.0.1:8080/api/v1/ws --token TOKEN --device sim-0000

It subscribes to the device's telemetry (resuming after ``--resume-from`` if given), prints
``<event id> <metric>=<value> ...`` for each reading, sends the command ``--command`` (default
``ping``) once the first reading is in, prints its result, and exits after ``--count`` readings.
The token also comes from ``IOTHUB_CLIENT__TOKEN``, and the URL from the hub's address in
``IOTHUB_CLIENT__URL`` (default http://127.0.0.1:8080), as for ``iothub watch`` and ``iothub command``. The token needs
the ``command`` scope to send commands (a ``read`` token may only subscribe).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidURI


def parse_args() -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="Follow a device over iothub's WebSocket and command it.")
    hub = env.get("IOTHUB_CLIENT__URL", "http://127.0.0.1:8080").rstrip("/")
    default_url = "ws" + hub.removeprefix("http") + "/api/v1/ws"  # http -> ws, https -> wss
    parser.add_argument("--url", default=default_url, help="the hub's WebSocket URL [from IOTHUB_CLIENT__URL]")
    parser.add_argument("--token", default=env.get("IOTHUB_CLIENT__TOKEN"), help="API token [IOTHUB_CLIENT__TOKEN]")
    parser.add_argument("--device", required=True, help="device id to follow")
    parser.add_argument("--command", default="ping", help="command to send once the first reading is in")
    parser.add_argument("--count", type=int, default=3, help="readings to print before exiting")
    parser.add_argument("--resume-from", type=int, default=None, help="replay readings after this event id")
    parser.add_argument("--within", type=float, default=60.0, help="give up after this many seconds")
    args = parser.parse_args()
    if not args.token:
        parser.error("an API token is needed: --token or IOTHUB_CLIENT__TOKEN")
    return args


async def follow(args: argparse.Namespace) -> None:
    async with connect(args.url, open_timeout=10) as ws:
        # The token could also go in the Authorization header; as a first frame it works from browsers too.
        await ws.send(json.dumps({"type": "auth", "token": args.token}))
        subscribe = {"type": "subscribe", "id": "readings", "devices": [args.device], "types": ["telemetry"]}
        if args.resume_from is not None:
            subscribe["resume_from"] = args.resume_from
        await ws.send(json.dumps(subscribe))
        readings, commanded, answered = 0, False, False
        async with asyncio.timeout(args.within):
            async for text in ws:
                frame = json.loads(text)
                kind = frame["type"]
                if kind == "event":
                    metrics = " ".join(f"{k}={v}" for k, v in frame["data"]["metrics"].items())
                    print(f"{frame['id']} {metrics}", flush=True)
                    readings += 1
                    if not commanded:
                        command = {"type": "command", "ref": "c1", "device": args.device, "name": args.command}
                        await ws.send(json.dumps(command))
                        commanded = True
                elif kind == "command_result":
                    shown = frame["result"] if frame["status"] == "ok" else frame["error"]
                    print(f"command {args.command}: {frame['status']} {json.dumps(shown)}", flush=True)
                    answered = True
                elif kind == "gap":
                    print(f"gap: {frame['missed']} events after {frame['after_id']} ({frame['reason']})", flush=True)
                elif kind == "error":
                    raise SystemExit(f"ws_app: the hub refused a message: {frame['code']}: {frame['message']}")
                if readings >= args.count and answered:
                    return


def main() -> None:
    args = parse_args()
    try:
        asyncio.run(follow(args))
    except ConnectionClosed as closed:
        reason = closed.rcvd.reason if closed.rcvd is not None else "connection lost"
        code = closed.rcvd.code if closed.rcvd is not None else "-"
        sys.exit(f"ws_app: the hub closed the connection ({code}): {reason}")
    except TimeoutError:  # before OSError, which it is a kind of
        sys.exit(f"ws_app: no {args.count} readings and command result from {args.device} within {args.within:g} s")
    except (OSError, InvalidURI) as exc:
        sys.exit(f"ws_app: cannot reach {args.url}: {exc}")


if __name__ == "__main__":
    main()
