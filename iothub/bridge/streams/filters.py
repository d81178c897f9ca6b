"""What a consumer subscribes to: devices (or all), labels, metrics and event types.

:meth:`StreamFilter.parse` takes plain values (lists of strings), so SSE query parameters, a
WebSocket JSON message and a gRPC request all build the same filter. Errors raise
:class:`BadSubscription`, whose message names the field (as the caller calls it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from iothub.bridge.errors import BadRequest
from iothub.devices import is_valid_id
from iothub.hub.events import EventType, HubEvent

ALL_TYPES = frozenset(EventType)


class BadSubscription(BadRequest):
    """A filter or resume point that cannot be served; the message names the field."""

    def __init__(self, field: str, problem: str, where: str = "parameter") -> None:
        super().__init__(f"{where} {field!r}: {problem}" if where else f"{field} {problem}")
        self.field = field


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """``devices`` None: every device; ``labels``: all must match; ``metrics`` None: every metric."""

    devices: frozenset[str] | None = None
    labels: tuple[tuple[str, str], ...] = ()
    metrics: frozenset[str] | None = None
    types: frozenset[EventType] = ALL_TYPES

    @classmethod
    def parse(
        cls,
        devices: Iterable[str] = (),
        labels: Iterable[str] = (),
        metrics: Iterable[str] = (),
        types: Iterable[str] = (),
        *,
        where: str = "parameter",
        names: Mapping[str, str] | None = None,
    ) -> StreamFilter:
        """Build a filter; empty values mean "everything". ``labels`` are ``key=value`` strings.

        ``where`` and ``names`` phrase errors the caller's way: ``parameter 'label': ...`` for a
        query string (``names={"labels": "label"}``), ``field 'labels': ...`` for a JSON message.
        """

        def bad(field: str, problem: str) -> BadSubscription:
            return BadSubscription((names or {}).get(field, field), problem, where)

        wanted_devices: frozenset[str] | None = None
        device_list = list(devices)
        if device_list and "*" not in device_list:
            for device in device_list:
                if not is_valid_id(device):
                    raise bad("devices", f"{device!r} is not a device id (or *)")
            wanted_devices = frozenset(device_list)
        pairs = set()
        for label in labels:
            key, sep, value = label.partition("=")
            if not sep or not key:
                raise bad("labels", f"{label!r} is not key=value")
            pairs.add((key, value))
        wanted_metrics = frozenset(metrics) or None
        if wanted_metrics is not None and not all(is_valid_id(m) for m in wanted_metrics):
            raise bad("metrics", "metric names follow [A-Za-z0-9_.-]{1,64}")
        wanted_types = set()
        for name in types:
            try:
                wanted_types.add(EventType(name))
            except ValueError:
                known = ", ".join(t.value for t in EventType)
                raise bad("types", f"{name!r} is not one of {known}") from None
        return cls(wanted_devices, tuple(sorted(pairs)), wanted_metrics, frozenset(wanted_types) or ALL_TYPES)

    def wants(self, event: HubEvent, labels: Mapping[str, str]) -> bool:
        """Whether ``event`` (from a device with ``labels``) passes; metrics are trimmed apart."""
        if event.type not in self.types:
            return False
        if self.devices is not None and event.device_id not in self.devices:
            return False
        return all(labels.get(k) == v for k, v in self.labels)
