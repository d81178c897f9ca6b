"""The gRPC channel: ``iothub.v1.TelemetryService/Subscribe`` with the selection (grpc.aio).

Entering returns once the hub has sent the stream's initial metadata, which it does once the stream
is attached: every event committed after that reaches it. Events are turned into the same objects
SSE and the WebSocket carry (``metrics`` as plain values, a status's ``since`` in ISO 8601), so lines
and ``--json`` read alike on every channel. A refused call (a bad filter, a token) is a
:class:`WatchError` with the status code and the hub's message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from iothub.v1 import events_pb2, telemetry_pb2, telemetry_pb2_grpc
from iothub.watch.events import Selection, Target, WatchError, WatchEvent, iso_ms


def _value(v: events_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind is None:
        return None
    found = getattr(v, kind)
    return int(found) if kind == "number" and float(found).is_integer() and abs(found) < 2**53 else found


def event_data(e: events_pb2.Event) -> dict[str, Any]:
    """The event as SSE's ``data:`` object."""
    data: dict[str, Any] = {"id": e.id, "type": e.type, "ts": e.ts_ms, "device_id": e.device_id}
    kind = e.WhichOneof("payload")
    if kind == "telemetry":
        seq = e.telemetry.seq if e.telemetry.HasField("seq") else None
        data |= {"seq": seq, "metrics": {k: _value(v) for k, v in e.telemetry.metrics.items()}}
    elif kind == "status":
        status = e.status
        since = iso_ms(status.since_ms) if status.HasField("since_ms") else None
        detail = status.detail if status.HasField("detail") else None
        data |= {"online": status.online, "reason": status.reason, "detail": detail, "since": since}
    elif kind == "command_result":
        result = e.command_result
        data |= {"id": result.id, "device_id": result.device_id, "name": result.name, "ok": result.ok}
        data |= {"result": MessageToDict(result.result)} if result.ok else {"error": result.error}
        data["latency_ms"] = result.latency_ms
    elif kind == "alert":
        data |= MessageToDict(e.alert)
    return data


def to_events(message: telemetry_pb2.SubscribeResponse) -> list[WatchEvent]:
    out = [WatchEvent(e.type, e.device_id, e.ts_ms, event_data(e), e.id, "grpc") for e in message.events]
    if message.HasField("gap"):  # events were lost before these
        gap = MessageToDict(message.gap, preserving_proto_field_name=True)
        out.insert(0, WatchEvent("gap", "", None, gap, None, "grpc"))
    return out


def _refused(address: str, exc: grpc.aio.AioRpcError, connecting: bool = False) -> WatchError:
    if connecting and exc.code() is grpc.StatusCode.UNAVAILABLE:
        return WatchError(f"cannot reach the hub's gRPC API at {address}: {exc.details()}")
    return WatchError(f"{address}: {exc.code().name}: {exc.details()}")


@asynccontextmanager
async def open_grpc(target: Target, selection: Selection) -> AsyncIterator[AsyncIterator[WatchEvent]]:
    selection.check()
    address = target.grpc_address
    metadata = (("authorization", f"Bearer {target.token}"),) if target.token else None
    stream_filter = events_pb2.StreamFilter(
        devices=selection.devices, labels=selection.labels, metrics=selection.metrics, types=selection.types
    )
    request = telemetry_pb2.SubscribeRequest(filter=stream_filter, resume_from=selection.resume_from)
    async with grpc.aio.insecure_channel(address) as channel:
        call = telemetry_pb2_grpc.TelemetryServiceStub(channel).Subscribe(request, metadata=metadata)
        try:
            async with asyncio.timeout(target.connect_timeout_s):
                await call.wait_for_connection()
        except grpc.aio.AioRpcError as exc:
            raise _refused(address, exc, connecting=True) from None
        except TimeoutError:
            call.cancel()
            raise WatchError(f"{address}: no stream began in {target.connect_timeout_s:g} s") from None

        async def events() -> AsyncIterator[WatchEvent]:
            async for message in call:
                for event in to_events(message):
                    yield event
            raise WatchError(f"{address}: the hub ended the stream")

        try:
            yield events()
        except grpc.aio.AioRpcError as exc:
            raise _refused(address, exc) from None
        finally:
            call.cancel()
