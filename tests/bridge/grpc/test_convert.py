"""The gRPC channel's frames: encoded once, joined into batches that parse as the stream messages."""

from __future__ import annotations

from iothub.bridge.grpc import convert
from iothub.bridge.streams import StreamGap
from iothub.hub.events import EventType, HubEvent
from iothub.v1 import devices_pb2, events_pb2, hub_pb2, telemetry_pb2


def telemetry_event(event_id: int, **metrics: float | bool | str) -> HubEvent:
    return HubEvent(event_id, EventType.TELEMETRY, 1_790_000_000_000, "th-1", {"seq": event_id, "metrics": metrics})


def test_a_batch_of_frames_is_a_subscribe_response_and_a_presence_update() -> None:
    events = [telemetry_event(1, t=21.5, on=True, mode="eco"), telemetry_event(2, t=22)]
    frames = [convert.event_frame(e, e.json) for e in events]
    gap = convert.field(2, convert.gap(StreamGap(3, 0, "slow_consumer")).SerializeToString())
    (batch,) = convert.batches(gap, frames)
    message = telemetry_pb2.SubscribeResponse.FromString(batch)
    assert (message.gap.missed, message.gap.after_id, message.gap.reason) == (3, 0, "slow_consumer")
    assert [e.id for e in message.events] == [1, 2]
    assert dict(message.events[0].telemetry.metrics) == {
        "t": events_pb2.Value(number=21.5), "on": events_pb2.Value(flag=True), "mode": events_pb2.Value(text="eco"),
    }  # fmt: skip
    assert devices_pb2.PresenceUpdate.FromString(batch).events == message.events
    suffix = convert.field(2, b"sub-1")
    connect = hub_pb2.ServerMessage.FromString(convert.field(1, suffix + b"".join(frames)))
    assert (connect.events.subscription, list(connect.events.events)) == ("sub-1", list(message.events))


def test_a_metrics_filter_trims_the_frame() -> None:
    event = telemetry_event(7, t=1, h=50)
    frame = convert.event_frame(event, event.json_with({"seq": 7, "metrics": {"h": 50}}))
    (only,) = telemetry_pb2.SubscribeResponse.FromString(frame).events
    assert dict(only.telemetry.metrics) == {"h": events_pb2.Value(number=50)}


def test_batches_stay_under_the_message_size() -> None:
    frames = [b"x" * (convert.MAX_MESSAGE_BYTES // 3)] * 7
    batches = list(convert.batches(b"", frames))
    assert [len(b) // len(frames[0]) for b in batches] == [3, 3, 1]
    assert b"".join(batches) == b"".join(frames)
    huge = [b"y" * (convert.MAX_MESSAGE_BYTES + 1)]
    assert list(convert.batches(b"gap", huge)) == [b"gap", huge[0]]


def test_alerts_and_command_results() -> None:
    alert = HubEvent(9, EventType.ALERT, 5, "th-1", {"rule": "hot", "state": "firing", "value": 31.5})
    assert convert.event(alert, alert.data).alert["rule"] == "hot"
    result = {"id": "r1", "device_id": "th-1", "name": "ping", "ok": False, "error": "busy", "latency_ms": 3}
    answer = convert.event(HubEvent(10, EventType.COMMAND_RESULT, 5, "th-1", result), result).command_result
    assert (answer.ok, answer.error, answer.HasField("result")) == (False, "busy", False)
