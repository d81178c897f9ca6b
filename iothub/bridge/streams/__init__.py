"""The stream core every live channel shares: SSE today, WebSocket and gRPC on the same code.

A channel (one per transport) owns one subscription to the hub's fan-out and an index of its
consumers; a consumer is one client subscription with a filter and a bounded queue. What a channel
brings of its own: the encoder of its frames, its wire format for gaps, and its transport.

Use it like this (:mod:`iothub.bridge.sse` is a complete channel)::

    def encode(event: HubEvent, body: bytes) -> bytes:  # body: the event's JSON, maybe trimmed
        return body  # a WebSocket channel keeps the shared body and wraps it per consumer on write

    channel = Channel("ws", hub.bus, hub.store, hub.labels, encode, Limits(queue_size=1000))
    StreamMetrics.of(hub.metrics.registry).add(channel)  # its counters in /metrics
    tasks.create_task(channel.run())  # routes committed events until channel.close()

    # for each client subscription (errors: BadSubscription, naming the field):
    stream_filter = StreamFilter.parse(devices=["th-1"], labels=["site=berlin"], where="field")
    if resume_after is not None:
        await channel.check_resume(resume_after, "resume_from")
    with channel.attach(stream_filter, resume_after) as consumer:
        async for delivery in consumer:  # the replay from the store first, then live
            if delivery.gap is not None:
                ...  # announce delivery.gap.view() in the channel's own wire format
            for frame in delivery.frames:  # in event id order, each event once
                ...  # shared with other consumers: wrap it (a subscription id), never change it
        if consumer.kicked:
            ...  # it fell too far behind (or its writes blocked): tell it, then close

What the core guarantees:

- **Routing** through an index (consumers by device id, by one of their labels, or everyone), so an
  event costs a walk over the consumers it may be for, not over all. Labels come from the hub's
  :class:`~iothub.hub.labels.LabelDirectory`: one dict lookup per event, never SQLite.
- **Encode once**: an event's frame is built once per channel, and once more per distinct metrics
  filter (a trimmed copy), never per consumer. Everything per consumer (a WebSocket subscription
  id around the shared body, say) belongs in the writer, after :class:`Delivery`.
- **Bounded queues**: ``Limits.queue_size`` frames per consumer, drop oldest; the consumer learns
  how many it lost in a :class:`StreamGap` (``missed``, ``after_id``, ``reason="slow_consumer"``)
  before its next frames. Past ``Limits.max_dropped`` it is kicked: iteration ends with
  ``consumer.kicked``. A transport that notices a blocked writer calls :meth:`Channel.kick` itself.
  While a consumer replays, a drop loses nothing (the replay reads on to the queue's new head), so
  it is neither announced nor counted.
- **Resume**: ``attach(filter, resume_after=N)`` routes live events to the consumer at once and
  replays events after ``N`` from the store in pages, up to the head of its live queue; the
  hand-over is by event id, so an event committed during the replay arrives exactly once. A gap
  (``reason="no longer stored"``) says when the store has pruned what was asked for, another
  (``missed=None``) when ``Limits.replay_limit`` events were replayed and the rest is skipped.
- **Counters** per channel in ``/metrics`` (:class:`StreamMetrics`): frames sent, frames dropped,
  consumers kicked, consumers connected.

Errors: :class:`BadSubscription` (a :class:`~iothub.bridge.errors.BadRequest`, HTTP 400) for a bad
filter or resume point; its message names the field.
"""

from iothub.bridge.streams.channel import Channel, ChannelStats, Encode, Limits
from iothub.bridge.streams.consumer import Consumer, Delivery, StreamGap
from iothub.bridge.streams.filters import BadSubscription, StreamFilter
from iothub.bridge.streams.metrics import StreamMetrics

__all__ = [
    "BadSubscription",
    "Channel",
    "ChannelStats",
    "Consumer",
    "Delivery",
    "Encode",
    "Limits",
    "StreamFilter",
    "StreamGap",
    "StreamMetrics",
]
