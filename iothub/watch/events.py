"""What the watch clients read and print: events, where the hub is, what to select, errors.

Pure values and formatting; no I/O. A readable line is ``time device type values``
(``2026-11-23T21:03:04.120Z th-1 telemetry temperature=21.5 humidity=40``); ``--json`` prints the
event object as the hub sends it on SSE and WebSocket.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from iothub.bridge.streams.filters import BadSubscription, StreamFilter

HEAD_FIELDS = ("id", "type", "ts", "device_id")


class WatchError(Exception):
    """A watch client could not do what it was asked; the message is one line naming why."""


class WatchTimeout(WatchError):
    """The events asked for did not arrive in time."""


@dataclass(frozen=True)
class WatchEvent:
    """One event from a channel. ``data`` is the whole event object (``id``, ``type``, ``ts``,
    ``device_id`` and the type's own fields) as SSE's ``data:`` carries it; ``id`` is None on
    channels without event ids (MQTT). A ``gap`` (events the hub could not deliver) has type
    ``gap`` and no device."""

    type: str
    device_id: str
    ts: int | None  # epoch ms
    data: Mapping[str, Any]
    id: int | None = None
    channel: str = ""

    @property
    def values(self) -> dict[str, Any]:
        """What the event says besides its head: a telemetry event's metrics, another's fields."""
        if self.type == "telemetry" and isinstance(self.data.get("metrics"), Mapping):
            return dict(self.data["metrics"])
        return {k: v for k, v in self.data.items() if k not in HEAD_FIELDS}

    def line(self) -> str:
        """The readable form: time, device, type, values."""
        values = " ".join(f"{k}={format_value(v)}" for k, v in self.values.items())
        return " ".join(p for p in (iso_ms(self.ts), self.device_id or "-", self.type, values) if p)

    def json(self) -> str:
        return json.dumps(dict(self.data), separators=(",", ":"), sort_keys=False)


def format_value(value: Any) -> str:
    """``21.5``, ``true``, ``null``, ``{"a":1}``; a string as it is unless it holds a space or quote."""
    if isinstance(value, str):
        return json.dumps(value) if (not value or any(c in value for c in ' "=\n')) else value
    return json.dumps(value, separators=(",", ":"))


def iso_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Target:
    """Where a running hub is and how to get in: HTTP(S) base URL and API token for SSE, WebSocket
    and REST (the token for gRPC too, at ``grpc_address``); broker host and port and a service
    account for MQTT."""

    url: str = "http://127.0.0.1:8080"
    token: str | None = None
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 10.0
    grpc_address: str = "127.0.0.1:50051"

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WatchError(f"hub URL {self.url!r}: expected http://host:port or https://host:port")

    @property
    def base(self) -> str:
        return self.url.rstrip("/")

    @property
    def ws_url(self) -> str:
        return "ws" + self.base.removeprefix("http") + "/api/v1/ws"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.mqtt_host}:{self.mqtt_port}"


@dataclass(frozen=True)
class Selection:
    """Which events: the live stream's filters (empty: everything) and where to resume from."""

    devices: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    resume_from: int | None = None

    def check(self) -> StreamFilter:
        """The filter, or a :class:`WatchError` naming the option at fault (as ``iothub watch`` spells it)."""
        names = {"devices": "--device", "labels": "--label", "metrics": "--metric", "types": "--type"}
        try:
            return StreamFilter.parse(self.devices, self.labels, self.metrics, self.types, where="option", names=names)
        except BadSubscription as exc:
            raise WatchError(str(exc)) from None

    def describe(self) -> str:
        parts = [
            f"{name}={','.join(values)}"
            for name, values in (
                ("types", self.types),
                ("devices", self.devices),
                ("labels", self.labels),
                ("metrics", self.metrics),
            )
            if values
        ]
        text = " ".join(parts) or "anything"
        return text if self.resume_from is None else f"{text} after event {self.resume_from}"
