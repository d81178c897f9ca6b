"""The hub's Prometheus metrics, in a registry of its own (several hubs can share a process).

Hot-path code only increments counters; gauges such as queue depths are read at scrape time
from the callables registered with :meth:`HubMetrics.gauge_callback`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double the output and say nothing useful here

GaugeReader = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class _CallbackCollector(Collector):
    def __init__(self) -> None:
        self._gauges: dict[str, tuple[str, tuple[str, ...], GaugeReader]] = {}

    def add(self, name: str, doc: str, labels: tuple[str, ...], read: GaugeReader) -> None:
        self._gauges[name] = (doc, labels, read)

    def collect(self) -> Iterator[Metric]:
        for name, (doc, labels, read) in self._gauges.items():
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            for label_values, value in read():
                family.add_metric(list(label_values), value)
            yield family


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_received = Counter(
            "iothub_messages_received", "Device messages seen by the hub, by topic kind", ["kind"], registry=r
        )
        self.messages_stored = Counter("iothub_messages_stored", "Telemetry messages committed", registry=r)
        self.points_stored = Counter("iothub_points_stored", "Metric points committed", registry=r)
        self.messages_rejected = Counter(
            "iothub_messages_rejected", "Device messages refused, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter("iothub_duplicates_dropped", "Telemetry dropped as a repeated seq", registry=r)
        self.seq_gaps = Counter("iothub_seq_gaps", "seq numbers never received", registry=r)
        self.events_published = Counter("iothub_events_published", "Events handed to the fan-out", registry=r)
        self.fanout_dropped = Counter(
            "iothub_fanout_dropped", "Events dropped from a slow consumer's queue", ["consumer"], registry=r
        )
        self.mqtt_auth = Counter(
            "iothub_mqtt_connects",
            "MQTT connection attempts, by result (ok, CONNACK code, or full)",
            ["result"],
            registry=r,
        )
        self.acl_denied = Counter(
            "iothub_acl_denied",
            "Publishes and subscriptions refused by the topic ACL",
            ["action"],
            registry=r,
        )
        self.mqtt_dropped = Counter(
            "iothub_mqtt_dropped",
            "Messages for MQTT clients dropped, by reason (queue_full: the oldest of a full client queue)",
            ["reason"],
            registry=r,
        )
        self.mqtt_protocol_errors = Counter(
            "iothub_mqtt_protocol_errors", "MQTT connections closed for breaking the protocol", registry=r
        )
        self.store_batch_seconds = Histogram(
            "iothub_store_batch_seconds",
            "Time to commit one batch to the store",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.store_batch_size = Histogram(
            "iothub_store_batch_messages",
            "Messages per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.alert_transitions = Counter(
            "iothub_alert_transitions", "Alert transitions, by state (firing, resolved)", ["state"], registry=r
        )
        self.webhook_attempts = Counter(
            "iothub_webhook_attempts",
            "Webhook delivery attempts, by outcome (delivered, failed, timeout, error, refused)",
            ["outcome"],
            registry=r,
        )
        self._callbacks = _CallbackCollector()
        r.register(self._callbacks)

    def gauge_callback(self, name: str, doc: str, labels: tuple[str, ...], read: GaugeReader) -> None:
        """Register a gauge whose samples ``read()`` yields at scrape time."""
        self._callbacks.add(name, doc, labels, read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
