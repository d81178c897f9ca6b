"""Follow a device's telemetry over the hub's gRPC API, and resume where it left off after a drop.

    python docs/examples/grpc_subscribe.py --token TOKEN --device sim-0000 [--address 127.0.0.1:50051]
        [--resume-from EVENT_ID] [--count N]

Prints one line per event (``<id> <device> metric=value ...``) and each gap; with ``--count`` it
stops after N events and prints ``resume_from=<last id>``. A refusal is one line with the gRPC status
(``Error: UNAUTHENTICATED: unknown API token``), exit status 1. The stream is re-opened with
``resume_from`` when it drops (the hub restarting, say): nothing is missed and nothing repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc

from iothub.v1 import events_pb2, telemetry_pb2, telemetry_pb2_grpc

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def show(value: events_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    return "-" if kind is None else str(getattr(value, kind))


async def follow(address: str, token: str, device: str, last_id: int | None, count: int | None) -> int | None:
    metadata = (("authorization", f"Bearer {token}"),)
    seen = 0
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), 10)  # an unreachable hub: say so, do not retry
        except TimeoutError:
            raise SystemExit(f"Error: cannot reach the hub's gRPC API at {address} (10 s)") from None
        telemetry = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        stream_filter = events_pb2.StreamFilter(devices=[device], types=["telemetry"])
        for attempt in range(10):  # re-open a dropped stream a few times, then give up
            request = telemetry_pb2.SubscribeRequest(filter=stream_filter, resume_from=last_id)
            try:
                async for message in telemetry.Subscribe(request, metadata=metadata):
                    if message.HasField("gap"):  # events you will never get: they came before these
                        print(f"missed {message.gap.missed} events ({message.gap.reason})", flush=True)
                    for event in message.events:  # in event id order
                        last_id = event.id  # resume from here after a reconnect
                        values = " ".join(f"{k}={show(v)}" for k, v in sorted(event.telemetry.metrics.items()))
                        print(f"{event.id} {event.device_id} {values}", flush=True)
                        seen += 1
                        if count is not None and seen >= count:
                            return last_id
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or attempt == 9:
                    raise
                await asyncio.sleep(min(2**attempt * 0.5, 10))
    return last_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ
    address = env.get("IOTHUB_CLIENT__GRPC_ADDRESS", "127.0.0.1:50051")
    parser.add_argument("--address", default=address, help="the hub's gRPC address [IOTHUB_CLIENT__GRPC_ADDRESS]")
    parser.add_argument("--token", default=env.get("IOTHUB_CLIENT__TOKEN"), help="API token [IOTHUB_CLIENT__TOKEN]")
    parser.add_argument("--device", required=True)
    parser.add_argument("--resume-from", type=int, help="the last event id you received")
    parser.add_argument("--count", type=int, help="stop after this many events")
    args = parser.parse_args()
    if not args.token:
        parser.error("an API token is needed: --token or IOTHUB_CLIENT__TOKEN")
    try:
        last = asyncio.run(follow(args.address, args.token, args.device, args.resume_from, args.count))
    except grpc.aio.AioRpcError as exc:
        print(f"Error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        return
    print(f"resume_from={last}")


if __name__ == "__main__":
    main()
