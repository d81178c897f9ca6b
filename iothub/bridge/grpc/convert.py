"""The hub's values as ``iothub.v1`` messages: metric values, presence, devices, events and gaps.

:func:`event_frame` is the gRPC channel's encoder: the stream core calls it once per event (and once
per distinct metrics filter) and every stream writes the same bytes. A frame is one element of
``repeated Event events = 1``, the field ``SubscribeResponse``, ``PresenceUpdate`` and Connect's
``SubscriptionEvents`` all have; a repeated field's encoding is its elements' encodings one after
another, so a batch of events is the frames joined (:func:`batches`), with the gap's field in front
when there is one. No event is encoded twice, and a stream writes one message per batch, not per event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from google.protobuf.struct_pb2 import Struct
from google.protobuf.struct_pb2 import Value as JsonValue

from iothub.bridge.streams import StreamGap
from iothub.hub.events import EventType, HubEvent
from iothub.hub.fleet import DeviceState
from iothub.hub.registry import DeviceRecord
from iothub.hub.store.base import Value
from iothub.v1 import devices_pb2, events_pb2

MAX_MESSAGE_BYTES = 1 << 20  # a batch is split past this (clients accept 4 MiB messages by default)


def value(v: Value | None) -> events_pb2.Value:
    """A metric value; None (a bucket with no numeric value) is a Value with nothing set."""
    if v is None:
        return events_pb2.Value()
    if isinstance(v, bool):
        return events_pb2.Value(flag=v)
    if isinstance(v, str):
        return events_pb2.Value(text=v)
    return events_pb2.Value(number=float(v))


def reading(ts_ms: int, v: Value) -> events_pb2.Reading:
    return events_pb2.Reading(value=value(v), ts_ms=ts_ms)


def struct(data: dict[str, Any] | None) -> Struct:
    out = Struct()
    if data:
        out.update(data)
    return out


def json_value(data: Any) -> JsonValue:
    """Any JSON value (a ping's data, say) as ``google.protobuf.Value``."""
    holder = Struct()
    holder.update({"v": data})
    return holder.fields["v"]


def presence(state: DeviceState | None) -> events_pb2.Presence:
    if state is None:
        return events_pb2.Presence(online=False, reason="unknown")
    return events_pb2.Presence(
        online=state.online, reason=state.reason.value, detail=state.detail, since_ms=state.since
    )


def device(record: DeviceRecord | None, state: DeviceState | None, device_id: str) -> devices_pb2.Device:
    """What the registry says of a device merged with what the hub saw of it (as the REST view)."""
    out = devices_pb2.Device(id=device_id, registered=record is not None, presence=presence(state))
    if record is not None:
        out.name, out.type, out.enabled = record.name, record.type, record.enabled
        out.labels.update(record.labels)
    if state is not None:
        out.first_seen_ms, out.last_seen_ms = state.first_seen, state.last_seen
        for metric, (ts, v) in state.latest.items():
            out.latest[metric].CopyFrom(reading(ts, v))
        out.messages, out.duplicates, out.seq_gaps = state.messages, state.duplicates, state.seq_gaps
        out.rejected.update(state.rejected)
    return out


def event(e: HubEvent, data: dict[str, Any]) -> events_pb2.Event:
    """An event with ``data`` (its own, or a copy trimmed to some metrics)."""
    out = events_pb2.Event(id=e.id, type=e.type.value, ts_ms=e.ts, device_id=e.device_id)
    if e.type is EventType.TELEMETRY:
        t = out.telemetry
        for metric, v in data.get("metrics", {}).items():
            t.metrics[metric].CopyFrom(value(v))
        if data.get("seq") is not None:
            t.seq = data["seq"]
    elif e.type is EventType.STATUS:
        out.status.CopyFrom(
            events_pb2.Presence(online=data["online"], reason=data["reason"], detail=data.get("detail"), since_ms=e.ts)
        )
    elif e.type is EventType.COMMAND_RESULT:  # the request id: request_id (events stored before: id)
        out.command_result.CopyFrom(command_result({**data, "id": data.get("request_id", data["id"])}))
    else:
        out.alert.CopyFrom(struct(data))
    return out


def command_result(view: dict[str, Any]) -> events_pb2.CommandResult:
    """A command result from its view (:meth:`iothub.hub.commands.CommandResult.view`)."""
    return events_pb2.CommandResult(
        id=view["id"], device_id=view["device_id"], name=view["name"], ok=view["ok"],
        result=struct(view.get("result")) if view["ok"] else None, error=view.get("error"),
        latency_ms=view["latency_ms"],
    )  # fmt: skip


def event_frame(e: HubEvent, body: bytes) -> bytes:
    """The channel's frame: the event as field 1 (``repeated Event events``) of a stream message.

    ``body`` is the event's JSON: the event's own (then its data is used as it is) or a copy
    trimmed to a subscription's metrics (parsed back, once per distinct filter).
    """
    data = e.data if body is e.json else json.loads(body)
    return field(1, event(e, data).SerializeToString())


def gap(g: StreamGap) -> events_pb2.Gap:
    return events_pb2.Gap(missed=g.missed, after_id=g.after_id, reason=g.reason)


def batches(head: bytes, frames: list[bytes]) -> Iterator[bytes]:
    """One delivery as stream messages: ``head`` (a gap's field, or nothing) and the frames, joined,
    split so that no message is much over :data:`MAX_MESSAGE_BYTES` (one frame may be on its own)."""
    chunk = [head] if head else []
    size = len(head)
    for frame in frames:
        if chunk and size + len(frame) > MAX_MESSAGE_BYTES:
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk.append(frame)
        size += len(frame)
    if chunk:
        yield b"".join(chunk)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (a message, bytes or a string)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload
