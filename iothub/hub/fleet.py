"""What the hub knows of each device: presence, counters, rejections and latest values.

Owned by the ingest task (the only writer); the HTTP API reads it. Persisted per batch through the
store's ``devices`` table, so a restarted hub remembers its fleet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from iothub.hub.dedup import SeqWindow
from iothub.hub.presence import PresenceReason
from iothub.hub.store.base import StoredDevice, Value


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class DeviceState:
    id: str
    first_seen: int
    last_seen: int
    seq: SeqWindow
    online: bool = False
    reason: PresenceReason = PresenceReason.UNKNOWN
    detail: str | None = None
    since: int | None = None
    messages: int = 0
    duplicates: int = 0
    seq_gaps: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    last_rejection: dict[str, Any] | None = None
    latest: dict[str, tuple[int, Value]] = field(default_factory=dict)
    last_logged_ms: int = 0  # rejections are logged at most once a minute per device

    def set_presence(self, online: bool, reason: PresenceReason, ts: int, detail: str | None = None) -> bool:
        """Apply a presence observation; True when online/offline changed (an event is due)."""
        if online == self.online and self.since is not None:
            return False
        self.online, self.reason, self.detail, self.since = online, reason, detail, ts
        return True

    def presence_view(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "reason": self.reason.value,
            "detail": self.detail,
            "since": iso(self.since),
        }

    def persisted(self) -> dict[str, Any]:
        return {
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "online": self.online,
            "reason": self.reason.value,
            "detail": self.detail,
            "since": self.since,
            "messages": self.messages,
            "duplicates": self.duplicates,
            "seq_gaps": self.seq_gaps,
            "rejected": dict(self.rejected),
            "last_rejection": self.last_rejection,
            "seq_highest": self.seq.highest,
        }

    def view(self) -> dict[str, Any]:
        """The REST representation."""
        return {
            "id": self.id,
            **self.presence_view(),
            "last_seen": iso(self.last_seen),
            "first_seen": iso(self.first_seen),
            "latest": {m: {"value": v, "ts": iso(ts)} for m, (ts, v) in sorted(self.latest.items())},
            "messages": self.messages,
            "duplicates": self.duplicates,
            "seq_gaps": self.seq_gaps,
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "last_rejection": self.last_rejection,
        }


class Fleet:
    def __init__(self, seq_window: int) -> None:
        self._seq_window = seq_window
        self.devices: dict[str, DeviceState] = {}

    def __len__(self) -> int:
        return len(self.devices)

    def get(self, device_id: str) -> DeviceState | None:
        return self.devices.get(device_id)

    def touch(self, device_id: str, now_ms: int) -> DeviceState:
        state = self.devices.get(device_id)
        if state is None:
            state = self.devices[device_id] = DeviceState(device_id, now_ms, now_ms, SeqWindow(self._seq_window))
        else:
            state.last_seen = now_ms
        return state

    def online_count(self) -> int:
        return sum(1 for d in self.devices.values() if d.online)

    def restore(self, stored: StoredDevice) -> DeviceState:
        s = stored.state
        state = DeviceState(
            stored.id,
            s["first_seen"],
            s["last_seen"],
            SeqWindow(self._seq_window, s.get("seq_highest", -1)),
            online=s["online"],
            reason=PresenceReason(s["reason"]),
            detail=s.get("detail"),
            since=s.get("since"),
            messages=s.get("messages", 0),
            duplicates=s.get("duplicates", 0),
            seq_gaps=s.get("seq_gaps", 0),
            rejected=Counter(s.get("rejected", {})),
            last_rejection=s.get("last_rejection"),
            latest=dict(stored.latest),
        )
        self.devices[stored.id] = state
        return state
