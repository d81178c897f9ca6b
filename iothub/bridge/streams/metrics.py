"""Every live channel's counters in ``/metrics``, read at scrape time from plain integers.

One family per figure with a ``channel`` label (``iothub_stream_dropped_total{channel="sse"}``); a
channel added with ``own_names=True`` is also shown under its own unlabelled names
(``iothub_sse_dropped_total``), the names SSE had before other channels shared the core.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from iothub.bridge.streams.channel import Channel

_FIGURES = (  # (name, help, counter?, read)
    ("frames_sent", "Event and gap frames written to {}", True, lambda c: c.stats.sent),
    ("dropped", "Events dropped from slow {}' queues", True, lambda c: c.stats.dropped),
    ("disconnected_slow", "{} disconnected for falling behind", True, lambda c: c.stats.kicked),
    ("clients", "Connected {}", False, lambda c: len(c.consumers)),
)


class StreamMetrics(Collector):
    """Use :meth:`of`: one per metrics registry, shared by every channel of a hub."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._channels: list[tuple[Channel[Any], bool]] = []
        registry.register(self)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> StreamMetrics:
        """The stream metrics of ``registry``, made on first use (whichever server asks first)."""
        if registry not in _BY_REGISTRY:
            _BY_REGISTRY[registry] = cls(registry)
        return _BY_REGISTRY[registry]

    def add(self, channel: Channel[Any], own_names: bool = False) -> None:
        self._channels.append((channel, own_names))

    def collect(self) -> Iterator[Metric]:
        for figure, doc, counter, read in _FIGURES:
            kind = CounterMetricFamily if counter else GaugeMetricFamily
            family = kind(f"iothub_stream_{figure}", doc.format("live-stream consumers"), labels=["channel"])
            for channel, _ in self._channels:
                family.add_metric([channel.name], float(read(channel)))
            yield family
            for channel, own_names in self._channels:
                if own_names:
                    what = f"{channel.name.upper()} clients"
                    yield kind(f"iothub_{channel.name}_{figure}", doc.format(what), value=float(read(channel)))


_BY_REGISTRY: WeakKeyDictionary[CollectorRegistry, StreamMetrics] = WeakKeyDictionary()
