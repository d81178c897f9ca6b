"""What a store backend offers the hub: batched writes that assign event ids, and queries."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from iothub.hub.events import HubEvent

Value = bool | int | float | str


class Agg(enum.StrEnum):
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    LAST = "last"
    COUNT = "count"


@dataclass(frozen=True, slots=True)
class Point:
    device_id: str
    metric: str
    ts: int
    value: Value


@dataclass(slots=True)
class PendingEvent:
    """An event waiting for its id; the store assigns ids in commit order."""

    type: str
    ts: int
    device_id: str
    data: dict[str, Any]


@dataclass(slots=True)
class Batch:
    """Everything one transaction commits."""

    points: list[Point] = field(default_factory=list)
    events: list[PendingEvent] = field(default_factory=list)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> persisted device state

    def __bool__(self) -> bool:
        return bool(self.points or self.events or self.devices)


@dataclass(frozen=True, slots=True)
class Series:
    metric: str
    points: list[tuple[int, Value | None]]  # the newest ``limit`` of the range, oldest first
    truncated: bool = False  # older points of the range were left out for the limit


@dataclass(frozen=True, slots=True)
class StoredDevice:
    id: str
    state: dict[str, Any]
    latest: dict[str, tuple[int, Value]]


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, batch: Batch) -> list[HubEvent]:
        """Commit ``batch`` in one transaction; return its events with their ids."""
        ...

    async def load_devices(self) -> list[StoredDevice]: ...

    async def metrics_of(self, device_id: str) -> list[str]: ...

    async def query(
        self,
        device_id: str,
        metrics: list[str],
        start_ms: int,
        end_ms: int,
        step_ms: int | None,
        agg: Agg,
        limit: int,
    ) -> list[Series]: ...

    async def events_after(self, after_id: int, limit: int) -> list[HubEvent]: ...

    async def event_bounds(self) -> tuple[int, int]:
        """``(oldest, newest)`` event ids still stored; ``(0, 0)`` when there are none."""
        ...
